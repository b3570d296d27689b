"""Usage accounting (behaviour.md section 7): from the end of a request to rows in the ledger.

record.py builds the usage record when the stream ends; outbox.py makes it durable in a Redis
stream without touching the response; writer.py drains the stream in batches, refetches the
generation, prices it (cost.py) and writes the ledger idempotently (ledger.py).
"""
