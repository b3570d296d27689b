"""The price catalogue (each model's prices and limits, from the providers' `/models`) and the
spend bound H computed from it (issue 23, parts 1 and 2)."""
