"""Moving Income Clarity's background work from the legacy scheduler to the queues.

- `config`: the migration's settings (ENABLE_QUEUE, MIGRATION_MODE, ...).
- `router`: decides, per job, legacy table or queue; honours the rollback switch in Redis.
- `breaker`: the circuit breaker in front of Redis.
- `legacy`: the `queued_sync` table: writing rows, claiming them, marking them.
- `fallback`: enqueue through the breaker; into `queued_sync` when Redis cannot take a job.
- `poller`: the legacy scheduler (`clarity legacy run`).
- `migrator`: moving pending legacy rows into the queues (`clarity migrate run`).
- `stats`: the figures behind `QueueService.get_detailed_stats()["migration"]`.
"""
