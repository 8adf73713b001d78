"""A Redis primary, its replicas and three sentinels on loopback: real redis-server processes
from redis/redis.conf, for the failover tests and bench/.

The nodes keep the production settings that matter to a failover: a password (and
`masterauth`, so that a demoted primary can follow the new one), CONFIG renamed (and the
sentinels told the new name), AOF on.

With `acl` (user -> passwords, as RedisServer takes them) the nodes run the ACL users of
redis/users.acl.j2 as deployed: replicas authenticate as `redis-replication` (masteruser),
the sentinels as `redis-sentinel` (auth-user), clients as `username`.

With `tls` (app.devstack.tls.TlsFiles) every node and sentinel listens with TLS only, with
`tls-replication yes`: replication, the sentinels' links to the nodes and to each other, and
clients all need a certificate of the same CA, as on the deployed hosts."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from app.devstack import redis_acl
from app.devstack.processes import Child, free_port, real_clock_env, tail
from app.devstack.redis_server import PASSWORD, RedisServer

if TYPE_CHECKING:
    from app.devstack.tls import TlsFiles

MASTER = "clarity"
CONFIG_COMMAND = "CLARITY_CONFIG_b3f1c9"  # as renamed in redis/redis.conf


class PortTaken(RuntimeError):
    """The port picked for a server was bound by something else before the server started."""


class SentinelGroup:
    def __init__(self, workdir: Path, replicas: int = 2, sentinels: int = 3,
                 master: str = MASTER, password: str = PASSWORD, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000, extra: tuple[str, ...] = (),
                 acl: dict | None = None, acl_prefix: str = "clarity",
                 username: str | None = None, tls: TlsFiles | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.master = master
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.acl = acl
        self.tls = tls
        self.username = None
        self.auth_user = ""
        auth_pass = password
        if acl is not None:
            self.username = username or redis_acl.OPERATOR
            self.auth_user = redis_acl.SENTINEL
            auth_pass = redis_acl.passwords(acl[redis_acl.SENTINEL])[0]
            self.password = redis_acl.passwords(acl[self.username])[0]
            masterauth = ("--masteruser", redis_acl.REPLICATION,
                          "--masterauth", redis_acl.passwords(acl[redis_acl.REPLICATION])[0])
        else:
            masterauth = ("--masterauth", password)
        self.auth_pass = auth_pass
        # No delay before a full sync (production keeps Redis' default of 5 s).
        auth = (*masterauth, "--repl-diskless-sync-delay", "0", *extra)
        self.nodes = [RedisServer(self.dir / f"node{i}", password=password, extra=auth,
                                  acl=acl, acl_prefix=acl_prefix, username=self.username,
                                  tls=tls)
                      for i in range(replicas + 1)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[Child] = []

    # -- life -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        primary, *replicas = self.nodes
        primary.start()
        for node in replicas:
            node.extra = (*node.extra, "--replicaof", "127.0.0.1", str(primary.port))
            node.start()
        for i, port in enumerate(self.sentinel_ports):
            self.sentinel_ports[i] = self._start_sentinel(port, primary.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen = self.sentinel_client(self.sentinel_ports[0]).sentinel_slaves(self.master)
                info = primary.client(socket_timeout=2).info("replication")
                online = [k for k, v in info.items()
                          if k.startswith("slave") and isinstance(v, dict)
                          and v.get("state") == "online"]
                if len(seen) == len(replicas) == len(online):
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{len(replicas)} replica(s) not in sync and seen by the sentinels "
                           f"within {timeout}s")

    def wait_replicas_healthy(self, timeout: float = 30.0) -> SentinelGroup:
        """Until every sentinel lists every replica as a plain, linked replica.

        start() returns once one sentinel lists the replicas, but a sentinel learns a
        replica's link status from the replica's INFO, polled every 10 s: a replica still
        syncing when first polled stays "err" to it until the next poll. Whatever asks the
        sentinels which replica is healthy (the backup script) waits for this first.
        """
        deadline = time.monotonic() + timeout
        while True:
            views = {}
            for port in self.sentinel_ports:
                try:
                    views[port] = [(r["flags"], r.get("master-link-status"))
                                   for r in self.sentinel_client(port).sentinel_slaves(self.master)]
                except redis.RedisError as exc:
                    views[port] = repr(exc)
            if all(view == [("slave", "ok")] * (len(self.nodes) - 1) for view in views.values()):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not healthy to every sentinel within {timeout}s: "
                                   f"{views}")
            time.sleep(0.2)

    def _start_sentinel(self, port: int, primary_port: int, attempts: int = 3) -> int:
        """Start a sentinel on `port`, or on another free port if that one was taken since it
        was picked (the servers' replication links and our clients take ephemeral ports from
        the same range meanwhile); the port it listens on."""
        for _ in range(attempts - 1):
            try:
                return self._start_sentinel_on(port, primary_port)
            except PortTaken:
                port = free_port()
        return self._start_sentinel_on(port, primary_port)

    def _start_sentinel_on(self, port: int, primary_port: int) -> int:
        conf = self.dir / f"sentinel-{port}.conf"  # sentinels rewrite their file: ours alone
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir.resolve()}\n"
            f"sentinel monitor {self.master} 127.0.0.1 {primary_port} 2\n"
            + (f"sentinel auth-user {self.master} {self.auth_user}\n" if self.auth_user else "")
            + f"sentinel auth-pass {self.master} {self.auth_pass}\n"
            f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master} 1\n"
            f"sentinel rename-command {self.master} CONFIG {CONFIG_COMMAND}\n")
        tls = () if self.tls is None else (
            "--port", "0", "--tls-port", str(port), *self.tls.redis_args())
        child = Child(f"sentinel {port}", ["redis-server", str(conf), "--sentinel", *tls],
                      self.dir / f"sentinel-{port}.log", real_clock_env()).start()
        self.sentinels.append(child)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and child.alive:
            try:
                if self.sentinel_client(port).ping():
                    return port
            except (redis.ConnectionError, redis.TimeoutError):  # not up yet, or not ours
                time.sleep(0.05)
        log = tail(child.log)
        if "Address already in use" in log and not child.alive:
            self.sentinels.remove(child)
            raise PortTaken(port)
        raise RuntimeError(f"sentinel on port {port} did not start:\n{log}")

    def stop(self) -> None:
        for child in self.sentinels:
            child.stop(signal.SIGTERM, timeout=10)
        for node in self.nodes:
            node.stop()

    # -- looking --------------------------------------------------------------------------

    def sentinel_client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True,
                           **(self.tls.client_kwargs() if self.tls is not None else {}))

    def primary_port(self) -> int | None:
        """The primary the sentinels name now (None while they cannot say)."""
        for port in self.sentinel_ports:
            try:
                _host, found = self.sentinel_client(port).sentinel_get_master_addr_by_name(
                    self.master)
                return int(found)
            except (redis.RedisError, TypeError):
                continue
        return None

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def role(self, node: RedisServer) -> str | None:
        try:
            return node.client(socket_timeout=2).info("replication")["role"]
        except redis.RedisError:
            return None

    @property
    def env(self) -> dict[str, str]:
        env = {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
               "REDIS_SENTINEL_MASTER": self.master, "REDIS_PASSWORD": self.password,
               "REDIS_DB": "0"}
        if self.username:
            env["REDIS_USERNAME"] = self.username
        if self.tls is not None:
            env.update(self.tls.env)
        return env
