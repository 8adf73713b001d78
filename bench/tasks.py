"""Benchmark tasks, the same work for both systems: nothing, or record pickup latency."""

import os
import time

import redis
from huey import PriorityRedisHuey

from worker.queues import QUEUE_NAMES
from worker.registry import task

LATENCY_KEY = "bench:latency"


def _latency_client():
    return redis.Redis(port=int(os.environ["REDIS_PORT"]), password=os.environ["REDIS_PASSWORD"])


_client = None


def record_latency(sent: float):
    global _client
    if _client is None:
        _client = _latency_client()
    _client.rpush(LATENCY_KEY, f"{time.time() - sent:.6f}")


# -- ours ---------------------------------------------------------------------------------

@task(QUEUE_NAMES, name="noop")
def noop(payload: dict):
    return None


@task(QUEUE_NAMES, name="latency")
def latency(payload: dict):
    record_latency(payload["t"])


# -- plain Huey, same Redis ---------------------------------------------------------------

huey = PriorityRedisHuey("bench", results=False, port=int(os.environ.get("REDIS_PORT", "6379")),
                         password=os.environ.get("REDIS_PASSWORD"))


@huey.task()
def huey_noop():
    return None


@huey.task()
def huey_latency(sent):
    record_latency(sent)
