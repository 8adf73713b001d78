"""`clarity doctor`: check that Redis and the workers are set up the way the queue needs.

Each check prints OK, WARN or FAIL; every WARN and FAIL says how to fix it. The exit status
is 1 when any check fails (warnings alone exit 0), 2 when the configuration cannot be read.

Checks, in order (the Redis ones stop at the first that makes the rest meaningless):
  tls            off, or on: the CA that verifies Redis and the client certificate's expiry
                 (a TLS failure while connecting is named under reachability, with its
                 likely cause: wrong CA, no client certificate, a plain port)
  reachability   TCP connect and PING
  user           the Redis ACL user this process is (ACL WHOAMI, REDIS_USERNAME)
  auth           the password works, and Redis refuses clients without one
  (any check)    a command the ACL user may not run fails that check, naming the user and
                 the command (docs/deploy.md#redis-users says what each user may do)
  eviction       maxmemory-policy noeviction (an LRU policy silently drops jobs), maxmemory set
  memory         used memory against maxmemory (noeviction: at 100 % every write fails)
  persistence    AOF on, and the last RDB save, AOF write and AOF rewrite succeeded
  commands       FLUSHALL, FLUSHDB, KEYS, DEBUG, CONFIG renamed or disabled (COMMAND INFO)
  clock          host clock vs Redis TIME (leases and delayed jobs compare the two)
  latency        round-trip percentiles of 50 PINGs from this host
  failed:<queue> size of each failed set and the age of its oldest entry
  host           on the Redis host itself (Redis on this machine, or --host-checks):
                 transparent huge pages off, vm.overcommit_memory = 1
  workers        a live heartbeat (under 30 s old) for every queue

docs/troubleshooting.md says what each failing check means and what to do.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass

import click

DANGEROUS = ("flushall", "flushdb", "keys", "debug", "config")
MAX_SKEW_SECONDS = 1.0
MEMORY_WARN, MEMORY_FAIL = 0.80, 0.95
LATENCY_SAMPLES = 50
LATENCY_WARN_MS = 5.0  # p95 of a PING; a queue spends one round trip per job
FAILED_WARN_COUNT = 10_000
FAILED_WARN_AGE_DAYS = 7
THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
OVERCOMMIT_PATH = "/proc/sys/vm/overcommit_memory"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
CERT_WARN_DAYS = 21


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


class Doctor:
    def __init__(self, settings, config_command: str | None = None, queues=None,
                 check_workers: bool = True, host_checks: bool | None = None,
                 host_root: str = "/"):
        import redis

        self.settings = settings
        self.config_command = config_command
        self.queues = list(queues) if queues else None
        self.check_workers = check_workers
        self.host_checks = host_checks
        self.host_root = host_root
        self.where = settings.redis_display()
        from worker import connections

        self.client = redis.Redis(connection_pool=connections.connection_pool(settings, 3.0))
        # COMMAND INFO answers nil for unknown (renamed) commands; redis-py's parser
        # cannot take that, so read the raw reply.
        self.client.set_response_callback("COMMAND", lambda response, **kw: response)
        self.results: list[Check] = []

    def add(self, name, status, detail, fix=""):
        self.results.append(Check(name, status, detail, fix))

    def run(self) -> list[Check]:
        self.check_tls()
        if self.check_connection():
            checks = [self.check_user, self.check_topology, self.check_auth,
                      self.check_memory, self.check_persistence, self.check_commands,
                      self.check_clock, self.check_latency, self.check_failed_sets,
                      self.check_host]
            if self.check_workers:
                checks.append(self.check_heartbeats)
            for check in checks:
                self.guarded(check)
        return self.results

    def guarded(self, check) -> None:
        """Run one check; a command this ACL user may not run fails that check alone."""
        from redis.exceptions import ResponseError

        from worker.connections import permission_denied

        try:
            check()
        except ResponseError as exc:
            if not permission_denied(exc):
                raise
            name = check.__name__.removeprefix("check_")
            self.add(name, "fail", f"Redis user {self.user} lacks permission for what this "
                     f"check runs: {exc}",
                     "see docs/deploy.md#redis-users (what each user may do); run the check "
                     "with the user it is meant for, or fix the ACL in redis/users.acl.j2")

    @property
    def user(self) -> str:
        return getattr(self, "_user", None) or self.settings.redis_user()

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.results)

    # -- checks --------------------------------------------------------------------------

    def check_tls(self):
        """TLS as configured (REDIS_TLS*): the files themselves, before any connection."""
        import datetime

        s = self.settings
        if not s.tls:
            self.add("tls", "ok", "off: plain TCP to Redis (REDIS_TLS=true or a rediss:// "
                     "REDIS_URL turns it on)")
            return
        fix = ("deploy a current certificate and key for this host, signed by the CA Redis "
               "trusts (/etc/clarity/tls/host.crt, host.key, ca.crt on the fleet), or point "
               "REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE and REDIS_TLS_CA_FILE at them")
        try:
            cas = _certificates(s.redis_tls_ca_file) if s.redis_tls_ca_file else []
            client = _certificates(s.redis_tls_cert_file)[0] if s.redis_tls_cert_file else None
        except (OSError, ValueError) as exc:
            self.add("tls", "fail", f"cannot read a TLS certificate: {exc}", fix)
            return
        trusted = "; ".join(c.subject.rfc4514_string() for c in cas) or "the system's CA store"
        verified = (f"server verified against {trusted}"
                    + ("" if s.redis_tls_check_hostname else ", host names not checked"))
        if client is None:
            self.add("tls", "ok", f"on, {verified}; no client certificate (enough only "
                     "while Redis does not ask for one: tls-auth-clients no)")
            return
        expires = client.not_valid_after_utc
        days = (expires - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
        detail = (f"on, {verified}; client certificate {client.subject.rfc4514_string()} "
                  f"expires {expires:%Y-%m-%d}")
        if days <= 0:
            self.add("tls", "fail", f"{detail}: expired, Redis refuses it", fix)
        elif days < CERT_WARN_DAYS:
            self.add("tls", "warn", f"{detail}, {days:.0f} day(s) left", fix)
        else:
            self.add("tls", "ok", f"{detail}, {days:.0f} days left")

    def check_connection(self) -> bool:
        from redis.exceptions import (
            AuthenticationError,
            ConnectionError,
            ResponseError,
            TimeoutError,
        )

        from worker.connections import tls_failure

        start = time.perf_counter()
        try:
            self.client.ping()
        except AuthenticationError as exc:
            self.add("reachability", "ok", f"{self.where} is reachable")
            self.add("auth", "fail", f"Redis refused user {self.user} with this password: "
                     f"{exc}",
                     "set REDIS_USERNAME and REDIS_PASSWORD (or redis://user:password@ in "
                     "REDIS_URL) to an ACL user's (docs/deploy.md#redis-users), or to "
                     "Redis' requirepass without a user")
            return False
        except ResponseError as exc:
            if "NOAUTH" in str(exc):
                self.add("reachability", "ok", f"{self.where} is reachable")
                self.add("auth", "fail", "Redis requires a password and none is configured",
                         "set REDIS_PASSWORD (or redis://:PASSWORD@host:port/db in REDIS_URL)")
                return False
            raise
        except (ConnectionError, TimeoutError, OSError) as exc:
            cause = tls_failure(exc, self.settings)
            if cause:
                self.add("reachability", "fail", f"cannot reach Redis at {self.where} "
                         f"(TLS {'on' if self.settings.tls else 'off'}): {exc}",
                         f"likely cause: {cause}")
                return False
            self.add("reachability", "fail", f"cannot reach Redis at {self.where}: {exc}",
                     "start redis-server (systemctl start redis-server, or `make up` for a "
                     "local stack) and check REDIS_HOST/REDIS_PORT or REDIS_URL and firewalls")
            return False
        rtt = (time.perf_counter() - start) * 1000
        self.add("reachability", "ok", f"{self.where} answers PING ({rtt:.1f} ms)")
        return True

    def check_user(self):
        """Which ACL user Redis says this process is (REDIS_USERNAME; `default` without)."""
        reply = self.client.execute_command("ACL", "WHOAMI")
        self._user = _text(reply)
        configured = self.settings.redis_user()
        if self._user != configured:
            self.add("user", "fail", f"connected as Redis user {self._user}, configured "
                     f"{configured}", "check REDIS_USERNAME (or the user in REDIS_URL)")
        elif self._user == "default":
            # A local stack (`clarity up`, requirepass); the deployed fleet has ACL users.
            self.add("user", "ok", "connected as Redis' `default` user (no REDIS_USERNAME; "
                     "deployed hosts use the ACL users of docs/deploy.md#redis-users)")
        else:
            self.add("user", "ok", f"connected as Redis user {self._user}")

    def check_topology(self):
        from worker import connections

        where = connections.topology(self.settings)
        self.primary = where["primary"]
        if where["mode"] == "single":
            self.add("topology", "ok", f"one Redis at {where['primary']} (no Sentinel)")
            return
        replicas = where["replicas"]
        status = "ok" if replicas else "warn"
        self.add("topology", status, f"Sentinel {where['master']}: primary {where['primary']}, "
                 f"replicas {', '.join(replicas) or 'none'}; sentinels "
                 f"{', '.join(where['sentinels'])}",
                 "" if replicas else "no replica: a failover has nothing to promote, and an "
                 "enqueue waiting for a replica (REDIS_WAIT_REPLICAS) fails; start one")

    def check_auth(self):
        import redis
        from redis.exceptions import RedisError

        from worker.connections import ssl_kwargs

        kwargs = dict(self.client.connection_pool.connection_kwargs)
        if self.settings.redis_target().sentinels:
            host, _, port = self.primary.rpartition(":")
            kwargs.update(host=host, port=int(port))
        if "path" in kwargs:
            anonymous = redis.Redis(unix_socket_path=kwargs["path"], socket_timeout=3)
        else:
            # With TLS it shows the client certificate: only the password is left out.
            anonymous = redis.Redis(host=kwargs.get("host", "127.0.0.1"),
                                    port=kwargs.get("port", 6379), socket_timeout=3,
                                    socket_connect_timeout=3, **ssl_kwargs(self.settings))
        try:
            anonymous.ping()
        except RedisError:
            self.add("auth", "ok", "password accepted; clients without it are refused")
            return
        finally:
            anonymous.close()
        self.add("auth", "fail", "Redis answers clients that give no password",
                 "set `requirepass` (or ACL users) in redis.conf and REDIS_PASSWORD for Clarity")

    def check_memory(self):
        info = self.client.info("memory")
        policy = str(info.get("maxmemory_policy", "?"))
        if policy != "noeviction":
            self.add("eviction", "fail",
                     f"maxmemory-policy is {policy}: Redis evicts keys under memory pressure, "
                     "which silently deletes queued jobs",
                     "set `maxmemory-policy noeviction` in redis.conf and restart (or "
                     "CONFIG SET maxmemory-policy noeviction); alert on memory instead")
        else:
            self.add("eviction", "ok", "maxmemory-policy noeviction")
        used, limit = int(info.get("used_memory", 0) or 0), int(info.get("maxmemory", 0) or 0)
        if not limit:
            self.add("maxmemory", "warn", "maxmemory is 0 (no limit): Redis can take the "
                     "host's memory and the memory alert cannot work",
                     "set `maxmemory` to about 75 % of the host's RAM in redis.conf")
            return
        share = used / limit
        detail = f"{used / 2**20:.1f} MiB used of maxmemory {limit / 2**20:.0f} MiB " \
                 f"({share:.0%})"
        fix = ("find what grows: `clarity stats` (a big failed set?), `redis-cli --bigkeys`; "
               "retry or clear failed jobs, or raise maxmemory (see docs/troubleshooting.md, "
               "High memory)")
        if share >= MEMORY_FAIL:
            self.add("memory", "fail", detail + ": writes fail at 100 % (noeviction)", fix)
        elif share >= MEMORY_WARN:
            self.add("memory", "warn", detail, fix)
        else:
            self.add("memory", "ok", detail)

    def check_persistence(self):
        info = self.client.info("persistence")
        problems = [f"{name} is {info.get(key)}" for key, name in (
            ("rdb_last_bgsave_status", "the last RDB save"),
            ("aof_last_write_status", "the last AOF write"),
            ("aof_last_bgrewrite_status", "the last AOF rewrite"))
            if info.get(key) not in (None, "ok")]
        if problems:
            self.add("persistence:status", "fail", "; ".join(problems) + ": Redis may be "
                     "refusing writes (stop-writes-on-bgsave-error) and a restart loses data",
                     "read Redis' log (journalctl -u redis-server): usually a full disk or "
                     "a permission change on its directory; free space, then BGSAVE")
        else:
            last = info.get("rdb_last_save_time")
            age = f"; last RDB save {time.time() - int(last):.0f}s ago" if last else ""
            self.add("persistence:status", "ok", f"last save, AOF write and AOF rewrite "
                     f"succeeded{age}")
        if int(info.get("aof_enabled", 0)):
            self.add("persistence", "ok", "AOF on")
        else:
            self.add("persistence", "fail", "AOF is off: a Redis restart loses every job since "
                     "the last RDB snapshot",
                     "set `appendonly yes` and `appendfsync everysec` in redis.conf (or "
                     "CONFIG SET appendonly yes, then make it permanent in the file)")
        if self.config_command:
            from redis.exceptions import RedisError

            try:
                got = self.client.execute_command(self.config_command, "GET", "appendfsync")
                value = _text(dict(_pairs(got)).get(b"appendfsync", b"?"))
            except RedisError as exc:
                self.add("config", "warn", f"{self.config_command} GET failed: {exc}",
                         "pass the renamed CONFIG command's name with --config-command")
                return
            if value != "everysec" and value != "always":
                self.add("persistence", "warn", f"appendfsync is {value}",
                         "set `appendfsync everysec` (at most 1 s of writes lost)")

    def check_commands(self):
        reply = self.client.execute_command("COMMAND", "INFO", *DANGEROUS)
        exposed = [name.upper() for name, entry in zip(DANGEROUS, reply, strict=False)
                   if entry is not None]
        if exposed:
            self.add("commands", "fail", f"dangerous commands are callable under their own "
                     f"names: {', '.join(exposed)}",
                     "add `rename-command NAME \"\"` (or an unguessable name) for each in "
                     "redis.conf; never rename EVAL/EVALSHA, DEL, SCAN, INFO, CLIENT, TIME")
        else:
            self.add("commands", "ok", "FLUSHALL, FLUSHDB, KEYS, DEBUG and CONFIG are renamed")

    def check_clock(self):
        before = time.time()
        seconds, micros = self.client.time()
        after = time.time()
        redis_now = seconds + micros / 1e6
        skew = redis_now - (before + after) / 2
        detail = f"Redis clock is {abs(skew):.3f}s {'ahead of' if skew > 0 else 'behind'} " \
                 "this host"
        if abs(skew) > MAX_SKEW_SECONDS:
            self.add("clock", "fail", detail + ": leases expire early or late and delayed "
                     "jobs run off time",
                     "run time synchronisation on both hosts (systemd-timesyncd or chrony: "
                     "`timedatectl set-ntp true`)")
        else:
            self.add("clock", "ok", detail)

    def check_latency(self):
        samples = []
        for _ in range(LATENCY_SAMPLES):
            start = time.perf_counter()
            self.client.ping()
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()

        def pct(q):
            return samples[min(len(samples) - 1, int(q * len(samples)))]

        detail = (f"PING round trip p50 {pct(0.50):.2f} ms, p95 {pct(0.95):.2f} ms, "
                  f"p99 {pct(0.99):.2f} ms, max {samples[-1]:.2f} ms ({len(samples)} samples)")
        if pct(0.95) > LATENCY_WARN_MS:
            self.add("latency", "warn", detail, "a job costs about one round trip: look for "
                     "a slow network path, a loaded Redis host (`redis-cli --latency-history "
                     "-i 1`, `redis-cli --intrinsic-latency 5` on the host) or swapping; see "
                     "docs/troubleshooting.md, Slow Redis")
        else:
            self.add("latency", "ok", detail)

    def check_failed_sets(self):
        from worker.queues import QUEUE_NAMES, QueueKeys

        pipe = self.client.pipeline(transaction=False)
        queues = self.queues or QUEUE_NAMES
        for queue in queues:
            key = QueueKeys(self.settings.redis_key_prefix, queue).failed
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        values = pipe.execute()
        seconds, _ = self.client.time()
        for index, queue in enumerate(queues):
            count, oldest = values[2 * index], values[2 * index + 1]
            if not count:
                self.add(f"failed:{queue}", "ok", "no failed jobs")
                continue
            age_days = (int(seconds) - oldest[0][1] / 1000) / 86400 if oldest else 0
            detail = f"{count} failed job(s), the oldest failed {age_days:.1f} day(s) ago"
            fix = (f"read them (`clarity failed list {queue}`, the dashboard's Failed page), "
                   f"fix the cause, then `clarity failed retry {queue} --all` or remove them; "
                   "failed jobs keep their payload and traceback in Redis until then")
            if count >= FAILED_WARN_COUNT or age_days >= FAILED_WARN_AGE_DAYS:
                self.add(f"failed:{queue}", "warn", detail, fix)
            else:
                self.add(f"failed:{queue}", "ok", detail)

    def redis_is_local(self) -> bool:
        import socket

        kwargs = self.client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return True
        host = str(kwargs.get("host", ""))
        return host in LOCAL_HOSTS or host in (socket.gethostname(), socket.getfqdn())

    def check_host(self):
        """THP and overcommit, readable only on the Redis host itself."""
        local = self.redis_is_local() if self.host_checks is None else self.host_checks
        if not local:
            self.add("host", "ok", "Redis runs on another host: run `clarity doctor "
                     "--host-checks --no-workers` there for THP and overcommit")
            return
        from pathlib import Path

        root = Path(self.host_root)
        try:
            thp = (root / THP_PATH.lstrip("/")).read_text().strip()
            mode = thp[thp.index("[") + 1:thp.index("]")] if "[" in thp else thp
        except (OSError, ValueError):
            mode = None
        if mode is None:
            self.add("host:thp", "warn", "cannot read transparent huge pages", "")
        elif mode != "never":
            self.add("host:thp", "warn", f"transparent huge pages are '{mode}': fork-based "
                     "saves stall Redis and memory use grows",
                     "`echo never > /sys/kernel/mm/transparent_hugepage/enabled` now, and "
                     "the clarity-redis-thp.service unit (systemd/) at boot")
        else:
            self.add("host:thp", "ok", "transparent huge pages: never")
        try:
            overcommit = (root / OVERCOMMIT_PATH.lstrip("/")).read_text().strip()
        except OSError:
            overcommit = None
        if overcommit != "1":
            self.add("host:overcommit", "warn", f"vm.overcommit_memory is {overcommit}: a "
                     "background save can fail to fork under memory pressure",
                     "`sysctl -w vm.overcommit_memory=1` and persist it in /etc/sysctl.d/ "
                     "(the Ansible common role does)")
        else:
            self.add("host:overcommit", "ok", "vm.overcommit_memory = 1")

    def check_heartbeats(self):
        from worker.management import QueueManager
        from worker.queues import QUEUE_NAMES

        workers = QueueManager(self.settings, client=self.client).workers()
        for queue in self.queues or QUEUE_NAMES:
            mine = [w for w in workers if w["queue"] == queue]
            alive = [w for w in mine if w["alive"]]
            stale = [w for w in mine if not w["alive"]]
            if alive:
                names = ", ".join(sorted({w["name"].rsplit(":", 1)[0] for w in alive}))
                self.add(f"workers:{queue}", "ok", f"{len(alive)} live worker(s): {names}")
            else:
                since = (f"; last heartbeat {min(w['secondsSinceHeartbeat'] for w in stale):.0f}s "
                         "ago") if stale else ""
                self.add(f"workers:{queue}", "fail", f"no live worker consumes {queue}{since}",
                         f"start one: `systemctl start clarity-worker@{queue}` (or "
                         f"`clarity worker --queue {queue}`)")
            if alive and stale:
                self.add(f"workers:{queue}", "warn",
                         f"{len(stale)} stale heartbeat(s) of stopped workers",
                         "harmless; they age out of the admin's worker list")


def _certificates(path) -> list:
    """The certificates of a PEM file (a CA bundle holds several)."""
    from pathlib import Path

    from cryptography import x509

    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def _pairs(reply):
    if isinstance(reply, dict):
        return reply.items()
    return zip(reply[::2], reply[1::2], strict=False)


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


MARK = {"ok": ("OK", "green"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "red")}


@click.command("doctor")
@click.option("--config-command", default=None, metavar="NAME",
              help="The renamed CONFIG command (rename-command CONFIG NAME), for the checks "
                   "that need CONFIG GET; the others use INFO and COMMAND INFO.")
@click.option("-q", "--queue", "queues", multiple=True,
              help="Queue that needs a live worker; repeat (default: all five).")
@click.option("--no-workers", is_flag=True, help="Check Redis only, not worker heartbeats.")
@click.option("--host-checks/--no-host-checks", default=None,
              help="Check THP and overcommit on this machine [default: when Redis runs "
                   "here].")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(config_command, queues, no_workers, host_checks, as_json):
    """Check Redis and the workers: TLS (CA, client certificate expiry), reachability, auth,
    eviction policy, memory against maxmemory, persistence (AOF, last save and rewrite),
    renamed commands, clock offset, round-trip latency percentiles, failed sets (size,
    oldest entry), THP and overcommit on the Redis host, heartbeats. Exits 1 when something
    is wrong; every WARN and FAIL says how to fix it (more in docs/troubleshooting.md)."""
    from worker.queues import QUEUE_NAMES
    from worker.settings import SettingsError, load_settings

    unknown = [q for q in queues if q not in QUEUE_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}: expected "
                                 f"{', '.join(QUEUE_NAMES)}", param_hint="--queue")
    pre: list[Check] = []
    try:
        settings = load_settings()
    except SettingsError as exc:
        if "JOB_SIGNING_SECRET" not in str(exc) or str(exc).count("\n") > 1:
            raise click.ClickException(str(exc)) from None
        # Only the signing secret is missing: the Redis checks still make sense.
        pre.append(Check("signing secret", "fail", "JOB_SIGNING_SECRET is not set: workers "
                         "and producers refuse to start",
                         "set JOB_SIGNING_SECRET (the same on every host): "
                         "`python3 -c 'import secrets; print(secrets.token_hex(32))'`"))
        settings = load_settings(JOB_SIGNING_SECRET="0" * 32)
    doc = Doctor(settings, config_command, queues, check_workers=not no_workers,
                 host_checks=host_checks)
    results = pre + doc.run()
    failed = any(c.status == "fail" for c in results)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [asdict(c) for c in results]},
                              indent=2))
    else:
        for c in results:
            label, color = MARK[c.status]
            click.echo(f"{click.style(f'{label:<4}', fg=color, bold=True)}  {c.name:<20} "
                       f"{c.detail}")
            if c.fix:
                click.echo(f"      {'':<20} fix: {c.fix}")
        problems = sum(c.status == "fail" for c in results)
        warnings = sum(c.status == "warn" for c in results)
        summary = (f"{problems} problem(s), {warnings} warning(s)" if problems or warnings
                   else "everything looks right")
        click.echo(f"\nclarity doctor: {summary} (Redis at {settings.redis_display()})")
    sys.exit(1 if failed else 0)
