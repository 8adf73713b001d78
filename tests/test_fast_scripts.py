"""worker.scripts.FastScript against a real redis-server: a call cut off mid-reply is reported
as it happened (nobody knows whether it ran), never retried into a different answer."""

from __future__ import annotations

import select
import socket
import threading
from types import SimpleNamespace

import pytest
import redis

from app.devstack.processes import free_port
from app.dispatch import certainly_not_sent
from worker.management import QueueManager
from worker.producer import enqueue


class CutAfterEvalsha:
    """A TCP relay to Redis that passes everything until a client sends EVALSHA: it lets
    Redis run it, drops the reply, closes the client's connection and stops listening (the
    client's next connect is refused), as a Redis host dying mid-call looks to a producer."""

    def __init__(self, upstream_port: int):
        self.port = free_port()
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.cut = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        server = socket.create_connection(("127.0.0.1", self.upstream))
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 5)
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    server.sendall(data)
                    if b"EVALSHA" in data:
                        server.recv(65536)  # Redis ran it; the reply never arrives
                        self.cut.set()
                        # shutdown, not only close: a close leaves the blocked accept()
                        # holding the socket, still listening.
                        self.listener.shutdown(socket.SHUT_RDWR)
                        self.listener.close()
                        return
                if server in ready:
                    data = server.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
        finally:
            client.close()
            server.close()


@pytest.fixture
def cut_redis(configure, redis_server):
    configure(redis_server)
    enqueue("sync", "record", {"n": "first"})  # the scripts are loaded: no NOSCRIPT below
    relay = CutAfterEvalsha(redis_server.port)
    configure(SimpleNamespace(env={**redis_server.env, "REDIS_PORT": str(relay.port)}))
    return relay


def test_an_enqueue_cut_off_mid_reply_is_unsure_and_landed(cut_redis, configure,
                                                           redis_server):
    with pytest.raises(redis.ConnectionError) as caught:
        enqueue("sync", "record", {"n": "cut"})
    assert cut_redis.cut.is_set()
    # The producer's fallback must treat it as "maybe ran" (a retry that met the refused
    # reconnect would have said "never sent", and the job would run twice).
    assert not certainly_not_sent(caught.value), caught.value
    configure(redis_server)
    assert QueueManager().counts("sync")["waiting"] == 2  # the first, and the cut one landed


def test_a_connection_closed_while_idle_is_replaced_before_the_next_call(configure,
                                                                         redis_factory):
    server = configure(redis_factory("idle"))
    enqueue("sync", "record", {"n": 1})  # this thread now keeps a connection
    client = server.client()
    client.client_kill_filter(_type="normal", skipme=True)  # Redis drops every other client
    enqueue("sync", "record", {"n": 2})  # no error: the dead connection is not sent on
    assert QueueManager().counts("sync")["waiting"] == 2


def test_an_error_reply_mid_round_trip_is_raised_after_every_reply_is_read(configure,
                                                                          redis_factory):
    server = configure(redis_factory("errors"))
    manager = QueueManager()
    enqueue("sync", "record", {"n": 1})
    counts = manager.storage("sync")._counts
    keys = manager.keys("sync")
    call = ([keys.waiting, keys.delayed, keys.active, keys.failed, keys.paused, keys.workers],
            [])
    server.client().set("not-a-hash", "x")
    counts.round_trip([("TIME",)], [call])
    sock = counts._local.pinned.conn._sock  # this thread's connection
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        counts.round_trip([("HGET", "not-a-hash", "f")], [call])
    # The script's reply after the error was read too: the connection is in step and kept
    # (a reply left unread would make the next call reconnect, or read the wrong reply).
    time_reply, reply = counts.round_trip([("TIME",)], [call])
    assert len(time_reply) == 2 and reply[0] == 1  # ZCARD waiting
    assert counts._local.pinned.conn._sock is sock
    assert manager.counts("sync")["waiting"] == 1


def test_the_overview_snapshot_reloads_scripts_redis_forgot(configure, redis_factory):
    server = configure(redis_factory("forgot"))
    enqueue("sync", "record", {"n": 1})
    manager = QueueManager()
    manager.snapshot(info_sections=("memory",))  # counts.lua known to Redis
    server.client().script_flush()
    counts, _workers, info = manager.snapshot(info_sections=("memory", "server"))
    assert counts["sync"]["waiting"] == 1
    assert info["used_memory"] > 0 and info["redis_version"].count(".") == 2


def test_snapshot_with_an_unreachable_redis_is_a_connection_error(configure):
    configure(SimpleNamespace(env={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()),
                                   "REDIS_PASSWORD": "x"}))
    with pytest.raises(redis.ConnectionError):
        QueueManager().snapshot(info_sections=("memory",))
