"""Benchmark: one user's sync of 20 accounts x 200 holdings x 2,000 transactions against
the local fake aggregator (run in its own process), on SQLite and PostgreSQL.

    .venv/bin/python bench/sync_bench.py [--backend sqlite|postgresql|both] [--runs 2]

Prints, per backend, the first sync (everything inserted) and a repeat (nothing changes):
total seconds and the share spent in the database. PostgreSQL: CLARITY_TEST_POSTGRES_URL,
or a throwaway cluster (app/devstack/postgres.py). Target: < 2 s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ACCOUNTS, HOLDINGS, TRANSACTIONS = 20, 200, 2000


def _serve(queue):
    from app.devstack.fake_aggregator import FakeAggregator

    fake = FakeAggregator().start()
    fake.add_user("1", accounts=ACCOUNTS, holdings=HOLDINGS, transactions=TRANSACTIONS)
    queue.put(fake.url)
    while True:
        time.sleep(3600)


def run(backend: str, url: str, aggregator_url: str, runs: int) -> list[dict]:
    from app.contracts import SyncType
    from app.db import migrate
    from app.db.engine import create_db_engine
    from app.devstack.fake_aggregator import CLIENT_ID, CLIENT_SECRET
    from app.jobs.aggregator import AggregatorClient
    from app.jobs.settings import load_handler_settings
    from app.jobs.sync import run_sync

    settings = load_handler_settings(
        database_url=url, aggregator_base_url=aggregator_url, aggregator_client_id=CLIENT_ID,
        aggregator_client_secret=CLIENT_SECRET, aggregator_page_size=500)
    engine = create_db_engine(url)
    migrate.upgrade(engine=engine)
    client = AggregatorClient(settings)
    out = []
    for i in range(runs):
        t = time.perf_counter()
        r = run_sync(1, SyncType.INITIAL, engine=engine, client=client, settings=settings)
        total = time.perf_counter() - t
        out.append({"backend": backend, "run": "first" if i == 0 else "repeat",
                    "seconds": total, "db_seconds": r.db_seconds,
                    "db_share": r.db_seconds / total, "rows_changed": r.rows_changed,
                    "transactions": r.transactions, "holdings": r.holdings})
    engine.dispose()
    client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    from bench import record

    record.begin()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(queue,), daemon=True)
    server.start()
    aggregator_url = queue.get(timeout=60)
    results = []
    cluster = None
    try:
        if args.backend in ("sqlite", "both"):
            folder = tempfile.mkdtemp(prefix="clarity-bench-")
            results += run("sqlite", f"sqlite:///{folder}/bench.db", aggregator_url, args.runs)
        if args.backend in ("postgresql", "both"):
            import os
            import uuid

            from app.devstack.postgres import ENV_URL, PostgresCluster, create_database_at

            server_url = os.environ.get(ENV_URL)
            if not server_url:
                cluster = PostgresCluster().start()
                server_url = cluster.url
            url = create_database_at(server_url, f"clarity_bench_{uuid.uuid4().hex[:6]}")
            results += run("postgresql", url, aggregator_url, args.runs)
    finally:
        if cluster is not None:
            cluster.stop()
        server.terminate()
    print(f"sync of {ACCOUNTS} accounts x {HOLDINGS} holdings x {TRANSACTIONS} transactions")
    print(f"{'backend':<11} {'run':<7} {'seconds':>8} {'db s':>7} {'db share':>9} "
          f"{'rows changed':>13}")
    for r in results:
        print(f"{r['backend']:<11} {r['run']:<7} {r['seconds']:>8.2f} {r['db_seconds']:>7.2f} "
              f"{r['db_share']:>8.0%} {r['rows_changed']:>13}")
    record.save("sync", {f"{r['backend']}_{r['run']}": {"seconds": r["seconds"],
                                                        "db_seconds": r["db_seconds"]}
                         for r in results})


if __name__ == "__main__":
    main()
