"""Real servers as child processes, for `clarity up`, the test suite and `bench/`.

Nothing here is mocked: `RedisServer` runs redis-server from redis/redis.conf,
`PostgresCluster` a throwaway PostgreSQL cluster, `WebStack` nginx in front of gunicorn,
`FakeAggregator` an HTTP server that speaks the aggregator's API, and `processes` holds
what they share (free ports, children that die with their parent, the real-clock
environment). `up` is the `clarity up` command built from these parts.

Config files come from the repository (redis/, nginx/, gunicorn.conf.py): this package is
for a checkout, not for production hosts.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
