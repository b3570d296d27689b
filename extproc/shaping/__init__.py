"""Request shaping of behaviour.md 2.14 and 5.1: tracking ids, tool repair, reasoning fixes."""
