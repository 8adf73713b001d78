"""A real redis-server started from redis/redis.conf (password on, commands renamed), or with
the ACL users of redis/users.acl.j2 (`acl=`: user -> passwords; the `default` user off), and
optionally TLS only (`tls=`: app.devstack.tls.TlsFiles)."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from app.devstack import REPO, redis_acl
from app.devstack.processes import Child, free_port, real_clock_env, tail

if TYPE_CHECKING:  # its module needs `cryptography`, which only making certificates does
    from app.devstack.tls import TlsFiles

CONF = REPO / "redis" / "redis.conf"
PASSWORD = "test-redis-password-1f2e"


class RedisServer:
    """redis-server on 127.0.0.1 with its data in `workdir`.

    `save=False` (tests): no RDB snapshots, the AOF of redis.conf only. `extra` adds
    command-line settings (they override the config file).

    `acl` (user -> password or [new, old]): the server loads the ACL file rendered from
    redis/users.acl.j2 with these passwords and `acl_prefix` (the `default` user off), and
    `client()` and `env` connect as `username` (the operator unless told) with its first
    password; `client_as(user)` as any other."""

    def __init__(self, workdir: Path, port: int | None = None, password: str = PASSWORD,
                 extra: tuple[str, ...] = (), *, conf: Path = CONF, maxmemory: str = "1gb",
                 save: bool = False, acl: dict[str, str | list[str]] | None = None,
                 acl_prefix: str = "clarity", username: str | None = None,
                 tls: TlsFiles | None = None, tls_auth_clients: str = "yes",
                 plain_port: int = 0):
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
        self.acl = dict(acl) if acl is not None else None
        self.acl_prefix = acl_prefix
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.plain_port = plain_port
        self.username = None
        if self.acl is not None:
            self.username = username or redis_acl.OPERATOR
            self.password = self.password_of(self.username)
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
        args = ["redis-server", str(conf), "--bind", "127.0.0.1",
                "--dir", str(self.dir.resolve()), "--daemonize", "no", "--logfile", "",
                "--maxmemory", self.maxmemory]
        if self.tls is not None:
            args += ["--port", str(self.plain_port), "--tls-port", str(self.port),
                     *self.tls.redis_args(self.tls_auth_clients)]
        else:
            args += ["--port", str(self.port)]
        if self.acl is not None:
            args += ["--aclfile", str(self.write_acl())]
        else:
            args += ["--requirepass", self.password]
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
        return redis.Redis(port=self.port, username=self.username, password=self.password,
                           **self.tls_kwargs, **kwargs)

    @property
    def tls_kwargs(self) -> dict:
        return self.tls.client_kwargs() if self.tls is not None else {}

    # -- ACL users ------------------------------------------------------------------------

    @property
    def acl_path(self) -> Path:
        return self.dir.resolve() / "users.acl"

    def password_of(self, user: str) -> str:
        return redis_acl.passwords(self.acl[user])[0]

    def client_as(self, user: str, password: str | None = None, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, username=user,
                           password=password if password is not None else self.password_of(user),
                           **self.tls_kwargs, **kwargs)

    def write_acl(self) -> Path:
        return redis_acl.write(self.acl_path, self.acl, self.acl_prefix)

    def reload_acl(self, acl: dict[str, str | list[str]]) -> None:
        """Write the ACL file with new passwords and `ACL LOAD` it, as the role's handler does
        (no restart); the operator's connection authenticates with any of its passwords."""
        old = self.acl
        self.acl = dict(acl)
        self.write_acl()
        candidates = [self.password_of(redis_acl.OPERATOR),
                      *redis_acl.passwords(old[redis_acl.OPERATOR])]
        for password in candidates:
            try:
                self.client_as(redis_acl.OPERATOR, password).execute_command("ACL", "LOAD")
                break
            except redis.AuthenticationError:
                continue
        else:
            raise RuntimeError("no operator password was accepted for ACL LOAD")
        if self.username is not None:
            self.password = self.password_of(self.username)

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
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.port),
               "REDIS_PASSWORD": self.password, "REDIS_DB": "0"}
        if self.username is not None:
            env["REDIS_USERNAME"] = self.username
        if self.tls is not None:
            env.update(self.tls.env)
        return env
