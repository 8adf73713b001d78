"""A real redis-server started from redis/redis.conf for tests (password on, commands renamed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "redis" / "redis.conf"
PASSWORD = "test-redis-password-1f2e"


def real_clock_env(env: dict | None = None) -> dict[str, str]:
    """`env` (default: ours) without libfaketime. When the suite runs under `faketime` to
    prove it does not depend on the date, servers that cannot run under it keep the real
    clock (redis-server's allocator recurses into faketime's clock_gettime and it never
    starts); our own Python processes keep the moved clock."""
    env = dict(os.environ if env is None else env)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "faketime" not in p]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    for name in [n for n in env if n.startswith("FAKETIME")]:
        del env[name]
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, password: str = PASSWORD,
                 extra: tuple[str, ...] = ()):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            ["redis-server", str(CONF), "--port", str(self.port), "--dir", str(self.dir),
             "--requirepass", self.password, "--daemonize", "no", "--save", "",
             "--maxmemory", "1gb", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=real_clock_env())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.client().ping():
                    # Loading the AOF after a restart answers LOADING until done.
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.kill()  # never leave a half-started server behind
        raise RuntimeError(f"redis-server did not start on port {self.port}; see "
                           f"{self.dir / 'redis.log'}")

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, **kwargs)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def kill(self):
        self.stop(signal.SIGKILL)

    def restart(self):
        self.stop()
        return self.start()

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.port),
                "REDIS_PASSWORD": self.password, "REDIS_DB": "0"}
