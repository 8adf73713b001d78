"""Job handlers, one module per queue. Each handler takes the JSON payload (a dict) and is
idempotent: the queue delivers at least once."""
