"""One contract, two storages: ours and Huey's PriorityRedisStorage, where their promises
overlap (Huey's own tests run one StorageTests mixin against every backend the same way).

Ours keeps a leased message in the active set instead of forgetting it; the contract below
is what a Huey consumer relies on either way."""

import datetime as dt
import uuid

import pytest
from huey.constants import EmptyData
from huey.storage import PriorityRedisStorage

from worker.queues import QUEUE_NAMES
from worker.storage import ReliableRedisStorage


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """A real three-master Redis Cluster: the five queues can be spread over shards, and
    every script touches one slot (the queue's hash tag) or Redis refuses it."""
    from app.devstack.cluster import RedisClusterGroup

    group = RedisClusterGroup(tmp_path_factory.mktemp("cluster")).start()
    yield group
    group.stop()


@pytest.fixture(params=["clarity", "clarity-cluster", "huey"])
def storage(request, redis_server):
    name = "sync"
    if request.param == "clarity":
        s = ReliableRedisStorage(name, prefix=f"c{uuid.uuid4().hex[:8]}", port=redis_server.port,
                                 password=redis_server.password, blocking=False)
    elif request.param == "clarity-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        s = ReliableRedisStorage(name, prefix=f"c{uuid.uuid4().hex[:8]}",
                                 client=cluster.client(), blocking=False)
    else:
        s = PriorityRedisStorage(f"h{uuid.uuid4().hex[:8]}", port=redis_server.port,
                                 password=redis_server.password, blocking=False)
    yield s
    s.flush_queue()
    s.flush_schedule()
    s.flush_results()


class TestStorageContract:
    def test_enqueue_dequeue_fifo_within_priority(self, storage):
        for i in range(5):
            storage.enqueue(f"item-{i}".encode())
        assert storage.queue_size() == 5
        assert [storage.dequeue() for _ in range(5)] == [f"item-{i}".encode() for i in range(5)]
        assert storage.dequeue() is None
        assert storage.queue_size() == 0

    def test_higher_priority_first(self, storage):
        storage.enqueue(b"low", 1)
        storage.enqueue(b"normal", 3)
        storage.enqueue(b"critical", 10)
        storage.enqueue(b"high", 5)
        storage.enqueue(b"critical-2", 10)
        out = [storage.dequeue() for _ in range(5)]
        assert out == [b"critical", b"critical-2", b"high", b"normal", b"low"]

    def test_enqueued_items_in_dequeue_order_and_flush(self, storage):
        storage.enqueue(b"a", 1)
        storage.enqueue(b"b", 5)
        assert storage.enqueued_items() == [b"b", b"a"]
        assert storage.enqueued_items(limit=1) == [b"b"]
        storage.flush_queue()
        assert storage.queue_size() == 0

    def test_schedule_read_returns_only_due_items(self, storage):
        now = dt.datetime.now()
        storage.add_to_schedule(b"past", now - dt.timedelta(seconds=10))
        storage.add_to_schedule(b"future", now + dt.timedelta(seconds=3600))
        assert storage.schedule_size() == 2
        assert storage.read_schedule(now) == [b"past"]
        assert storage.schedule_size() == 1
        assert storage.scheduled_items() == [b"future"]
        storage.flush_schedule()
        assert storage.schedule_size() == 0

    def test_key_value_data(self, storage):
        storage.put_data("k1", b"v1")
        assert storage.peek_data("k1") == b"v1"
        assert storage.pop_data("k1") == b"v1"
        assert storage.peek_data("k1") is EmptyData
        assert storage.put_if_empty("lock", b"1")
        assert not storage.put_if_empty("lock", b"2")
        assert storage.delete_data("lock")
        assert storage.incr("counter") == 1 and storage.incr("counter", 2) == 3


class TestReliableOnly:
    """Promises Huey's storage does not make (on one Redis, and on a Cluster)."""

    @pytest.fixture(params=["single", "cluster"])
    def ours(self, request, redis_server):
        if request.param == "cluster":
            cluster = request.getfixturevalue("redis_cluster")
            return ReliableRedisStorage("webhook", prefix=f"c{uuid.uuid4().hex[:8]}",
                                        client=cluster.client(), blocking=False,
                                        lease_seconds=0.5)
        return ReliableRedisStorage("sync", prefix=f"c{uuid.uuid4().hex[:8]}",
                                    port=redis_server.port, password=redis_server.password,
                                    blocking=False, lease_seconds=0.5)

    def test_dequeued_message_is_leased_not_forgotten(self, ours):
        ours.enqueue(b"job")
        lease = ours.lease(block=False)
        assert lease.data == b"job" and lease.deliveries == 1
        assert ours.conn.zcard(ours.keys.active) == 1

    def test_expired_lease_is_reaped_back_and_counted(self, ours):
        import time

        ours.enqueue(b"job")
        ours.lease(block=False)
        time.sleep(0.6)
        assert ours.reap() == (1, 0)
        again = ours.lease(block=False)
        assert again.data == b"job" and again.deliveries == 2

    def test_stale_holder_cannot_settle_a_reaped_lease(self, ours):
        import time

        from worker.storage import Settlement

        ours.enqueue(b"job")
        stale = ours.lease(block=False)
        time.sleep(0.6)
        ours.reap()
        fresh = ours.lease(block=False)
        assert ours.settle([Settlement("ack", stale)]) == 0
        assert ours.settle([Settlement("ack", fresh)]) == 1
        assert ours.conn.zcard(ours.keys.active) == 0

    def test_a_fetched_but_unstarted_lease_goes_back_without_counting_a_delivery(self, ours):
        from worker.storage import Settlement

        for i in range(3):
            ours.enqueue(f"j{i}".encode())
        first = ours.lease(block=False)
        ours.settle([Settlement("ack", first)], fetch=True)  # fetches j1 for this thread
        assert ours.release_unstarted() == 1
        lease = ours.lease(block=False)
        assert lease.data == b"j1" and lease.deliveries == 1

    def test_a_new_job_due_now_is_stored_alike_by_the_short_and_the_full_script(self, ours):
        """The commonest enqueue (fresh id, due now, no key, not a retry) runs
        enqueue_now.lua, every other one enqueue.lua: a job must not tell them apart."""
        from worker.storage import WireJob

        short, full, last = (uuid.uuid4().hex for _ in range(3))
        wake_before = ours.conn.llen(ours.keys.wake)
        ours.enqueue_jobs([WireJob(short, b"m1", 5)], fresh=True)   # enqueue_now.lua
        ours.enqueue_jobs([WireJob(full, b"m2", 5)], fresh=False)   # enqueue.lua
        ours.enqueue_jobs([WireJob(last, b"m3", 5)], fresh=True)
        a, b, c = (ours.conn.hgetall(ours.keys.job_prefix + i) for i in (short, full, last))
        assert set(a) == set(b) == {b"msg", b"prio", b"state", b"seq", b"enq"}
        assert (a[b"prio"], a[b"state"]) == (b[b"prio"], b[b"state"]) == (b"5", b"waiting")
        assert int(c[b"seq"]) - 1 == int(b[b"seq"]) == int(a[b"seq"]) + 1
        assert int(b[b"enq"]) >= int(a[b"enq"]) > 0
        score_a, score_b = (ours.conn.zscore(ours.keys.waiting, i) for i in (short, full))
        assert score_b == score_a + 1
        assert ours.conn.llen(ours.keys.wake) == wake_before + 3
        # FIFO within the priority across both scripts, higher priorities still first.
        ours.enqueue_jobs([WireJob(uuid.uuid4().hex, b"urgent", 10)], fresh=True)
        assert [ours.lease(block=False).data for _ in range(4)] == [b"urgent", b"m1", b"m2",
                                                                     b"m3"]


def test_the_five_queues_spread_over_a_clusters_shards_and_each_works(redis_cluster):
    from worker.storage import Settlement

    client, prefix = redis_cluster.client(), f"c{uuid.uuid4().hex[:8]}"
    owners = set()
    for queue in QUEUE_NAMES:
        storage = ReliableRedisStorage(queue, prefix=prefix, client=client, blocking=False)
        storage.enqueue(f"job on {queue}".encode())
        lease = storage.lease(block=False)
        assert lease.data == f"job on {queue}".encode()
        assert storage.settle([Settlement("ack", lease)]) == 1
        slot = client.keyslot(storage.keys.waiting)
        assert all(client.keyslot(key) == slot for key in (
            storage.keys.active, storage.keys.job(lease.id), storage.keys.wake))
        owners.add(client.nodes_manager.get_node_from_slot(slot).name)
    assert len(owners) > 1  # not all on one shard: Cluster spreads the load
