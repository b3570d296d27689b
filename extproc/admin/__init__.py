"""Operator commands of `llm-gateway`: users, tokens, credits, organisations and BYOK keys.

Every command prints one JSON object on stdout and exits 0, or prints ``{"error": ...}`` on
stderr and exits 2 on bad input (1 when the database itself fails) without changing anything.
Inputs are validated before connecting; each command uses one connection, applies the
migrations first (so an empty database works) and does its writes in one transaction.

Money is integer microdollars. USD arguments are plain decimals converted exactly: more than
six decimals is an error, never a rounding.

The database is ``DATABASE_URL`` if set, else the running local stack's
``<data_dir>/stack.json``; the signing secret for tokens is ``NEXTAUTH_SECRET`` if set, else
the file ``<data_dir>/nextauth_secret`` that the local stack writes. BYOK keys are encrypted
with ``BYOK_ENCRYPTION_KEY`` (base64 of 32 bytes), which the command never prints.

Layers: `inputs` (pure validation, before any connection is made), `connections` (where the
database, Redis and the signing secret are), `queries` (the SQL, each taking a connection),
`commands` (one handler per command: validate, resolve, connect, do, report) and `cli` (the
argparse wiring, the exit codes and the JSON output).
"""
