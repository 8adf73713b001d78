"""A real redis-server started from redis/redis.conf (password on, commands renamed)."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import redis

from app.devstack import REPO
from app.devstack.processes import Child, free_port, real_clock_env, tail

CONF = REPO / "redis" / "redis.conf"
PASSWORD = "test-redis-password-1f2e"


class RedisServer:
    """redis-server on 127.0.0.1 with its data in `workdir`.

    `save=False` (tests): no RDB snapshots, the AOF of redis.conf only. `extra` adds
    command-line settings (they override the config file)."""

    def __init__(self, workdir: Path, port: int | None = None, password: str = PASSWORD,
                 extra: tuple[str, ...] = (), *, conf: Path = CONF, maxmemory: str = "1gb",
                 save: bool = False):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.extra = tuple(extra)
        self.conf = Path(conf)
        self.maxmemory = maxmemory
        self.save = save
        self.log = self.dir / "redis.log"
        self.child: Child | None = None

    @property
    def proc(self):
        return self.child.proc if self.child else None

    def start(self, timeout: float = 10.0) -> RedisServer:
        # Its own copy of the config: CONFIG REWRITE (a Sentinel failover sends it) rewrites
        # the file a server started from, which must never be the repository's.
        conf = self.dir / "redis.conf"
        if self.conf.resolve() != conf.resolve():
            shutil.copyfile(self.conf, conf)
        args = ["redis-server", str(conf), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir.resolve()), "--requirepass", self.password,
                "--daemonize", "no", "--logfile", "", "--maxmemory", self.maxmemory]
        if not self.save:
            args += ["--save", ""]
        self.child = Child("redis", [*args, *self.extra], self.log, real_clock_env()).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.child.alive:
            try:
                if self.client(socket_timeout=2).ping():
                    # Loading the AOF after a restart answers LOADING until done.
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.child.stop(signal.SIGKILL)  # never leave a half-started server behind
        raise RuntimeError(f"redis-server did not start on port {self.port}; the end of "
                           f"{self.log}:\n{tail(self.log)}")

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.alive

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, **kwargs)

    def stop(self, sig=signal.SIGTERM):
        """SIGTERM: Redis fsyncs its AOF (and saves, with `save`) before it exits."""
        if self.child is not None:
            self.child.stop(sig, timeout=15)
        self.child = None

    def kill(self):
        self.stop(signal.SIGKILL)

    def restart(self):
        self.stop()
        return self.start()

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.port),
                "REDIS_PASSWORD": self.password, "REDIS_DB": "0"}
