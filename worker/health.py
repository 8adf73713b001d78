"""The worker's health server: /health, /status and /metrics on one small HTTP port.

Port scheme (so that the five queues' workers coexist on one host):

    HEALTH_CHECK_PORT set      that port (0 disables the server)
    otherwise, by queue        sync 9101, email 9102, cleanup 9103, webhook 9104,
                               notifications 9105; a worker serving several queues uses
                               its first queue's port

The deployment (Ansible, firewall 9101-9105, Prometheus scrape config) uses the same ports.
HEALTH_CHECK_HOST picks the listening address (default: all interfaces, so that Prometheus
on the monitoring host can scrape; the firewall limits who may).

/health   200 {"status": "ok"} when the consumer loop ticked within the last few seconds
          and Redis answers PING; else 503 with the failing check and its reason. A worker
          that is shutting down answers 503 "stopping".
/status   JSON: worker name, queues, concurrency, active jobs with running time, processed
          and failed counts, uptime, Redis round trip, version.
/metrics  Prometheus text format (see worker/metrics.py and docs/metrics.md).

The server runs in a daemon thread of the worker's main process; it never blocks the
consumer, and a Redis outage costs it at most REDIS_PROBE_TIMEOUT per request.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from redis.exceptions import RedisError

from worker import __version__, connections
from worker.queues import QUEUE_NAMES

log = logging.getLogger("clarity.health")

QUEUE_PORTS = {"sync": 9101, "email": 9102, "cleanup": 9103, "webhook": 9104,
               "notifications": 9105}
assert set(QUEUE_PORTS) == set(QUEUE_NAMES)
LOOP_STALE_SECONDS = 5.0  # the runner ticks every 0.1 s; 50 missed ticks mean it is stuck
REDIS_PROBE_TIMEOUT = 1.0


def health_port(settings, queues: list[str]) -> int:
    """HEALTH_CHECK_PORT if it was set (0 = disabled), else the first queue's port."""
    if "health_check_port" in settings.model_fields_set:
        return settings.health_check_port
    return QUEUE_PORTS[queues[0]]


class RedisProbe:
    """A separate small client with short timeouts: health answers fast when Redis hangs."""

    def __init__(self, settings):
        from worker.management import QueueManager

        self.settings = settings
        self.client = connections.redis_client(settings, timeout=REDIS_PROBE_TIMEOUT)
        self.manager = QueueManager(settings, client=self.client)
        self.sentinel = bool(settings.redis_target().sentinels)
        self._topology: dict | None = None
        self._topology_at = 0.0
        self.display = settings.redis_display()
        self.last_error: str | None = None
        self.last_rtt: float | None = None

    def ping(self) -> float | None:
        """Round trip in seconds, or None (reason in `last_error`)."""
        start = time.perf_counter()
        try:
            self.client.ping()
        except (RedisError, OSError) as exc:
            self.last_error = connections.failure_text(exc, self.settings)
            self.last_rtt = None
            return None
        self.last_rtt = time.perf_counter() - start
        self.last_error = None
        return self.last_rtt

    def topology(self) -> dict | None:
        """Where Redis is (the primary and replicas Sentinel names), re-read every 5 s."""
        if time.monotonic() - self._topology_at < 5.0:
            return self._topology
        self._topology_at = time.monotonic()
        try:
            self._topology = connections.topology(self.settings)
        except (RedisError, OSError) as exc:
            self._topology = {"mode": "sentinel" if self.sentinel else "single",
                              "error": f"{type(exc).__name__}: {exc}"}
        return self._topology

    def counts(self) -> dict | None:
        try:
            return self.manager.counts_all()
        except (RedisError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None


class HealthService:
    """What the endpoints answer; separate from HTTP so that it is easy to test."""

    def __init__(self, settings, runner, queues: list[str], metrics=None, probe=None):
        self.settings = settings
        self.runner = runner
        self.state = runner.state
        self.queues = list(queues)
        self.probe = probe or RedisProbe(settings)
        self.metrics = metrics
        self.processes = runner.processes

    def stopping(self) -> bool:
        return getattr(self.runner, "_signal", None) is not None

    def health(self) -> tuple[int, dict]:
        checks = {}
        age = time.monotonic() - self.state.consumer_alive
        if self.stopping():
            checks["consumer"] = {"ok": False, "reason": "worker is stopping"}
        elif self.state.waiting_for_redis is not None:
            checks["consumer"] = {"ok": False, "reason": "waiting for Redis before starting "
                                  f"({self.state.waiting_for_redis})"}
        elif age > LOOP_STALE_SECONDS:
            checks["consumer"] = {"ok": False, "reason": f"consumer loop has not ticked for "
                                  f"{age:.1f}s (stuck or dead)"}
        else:
            checks["consumer"] = {"ok": True, "lastTickSecondsAgo": round(age, 3)}
        with self.state.lock:
            stuck = [f"{j.task} {j.id} ({time.time() - j.started:.0f}s)"
                     for j in self.state.stuck.values()]
        if stuck:
            checks["threads"] = {"ok": False, "reason": f"{len(stuck)} thread(s) stuck past "
                                 f"their task timeout: {', '.join(stuck)}; restart the worker "
                                 "if they do not return"}
        else:
            checks["threads"] = {"ok": True, "stuck": 0}
        rtt = self.probe.ping()
        if rtt is None:
            checks["redis"] = {"ok": False, "reason": f"Redis at {self.probe.display} does not "
                               f"answer PING: {self.probe.last_error}"}
        else:
            checks["redis"] = {"ok": True, "roundtripMs": round(rtt * 1000, 3)}
            if self.probe.sentinel:
                checks["redis"]["topology"] = self.probe.topology()
        failing = [name for name, check in checks.items() if not check["ok"]]
        doc = {"status": "ok" if not failing else "unhealthy", "worker": self.state.name,
               "queues": self.queues, "checks": checks}
        if failing:
            doc["reason"] = "; ".join(checks[name]["reason"] for name in failing)
        return (200 if not failing else 503), doc

    def status(self) -> dict:
        state, now = self.state, time.time()
        with state.lock:
            active = [{"id": j.id, "queue": j.queue, "task": j.task,
                       "runningSeconds": round(now - j.started, 3), "deliveries": j.deliveries}
                      for j in state.active.values()]
            processed, failed, retried = state.processed, state.failed, state.retried
        doc = {
            "worker": state.name, "pid": os.getpid(), "host": socket.gethostname(),
            "version": __version__, "queues": self.queues, "concurrency": state.concurrency,
            "mode": "processes" if self.processes else "threads",
            "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.started_at)),
            "uptimeSeconds": round(now - state.started_at, 1),
            "stopping": self.stopping(),
        }
        if self.processes and self.metrics is not None:
            # Jobs run in forked children, whose state this process cannot see: their
            # counts come from the shared metric files; job details are not available.
            totals = self.metrics.totals()
            processed, failed, retried = (int(totals["completed"]), int(totals["failed"]),
                                          int(totals["retried"]))
            doc["activeJobCount"] = int(totals["active"])
            doc["activeJobs"] = None
        else:
            doc["activeJobCount"] = len(active)
            doc["activeJobs"] = active
        doc.update(processed=processed, failed=failed, retried=retried)
        rtt = self.probe.ping()
        doc["redis"] = {"url": self.probe.display, "up": rtt is not None,
                        "roundtripMs": round(rtt * 1000, 3) if rtt is not None else None,
                        "topology": self.probe.topology()}
        if rtt is None:
            doc["redis"]["error"] = self.probe.last_error
        return doc


class _Handler(BaseHTTPRequestHandler):
    service: HealthService  # set on the subclass built per server
    server_version = f"clarity-worker/{__version__}"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/health":
                code, doc = self.service.health()
                self._json(code, doc)
            elif path == "/status":
                self._json(200, self.service.status())
            elif path == "/metrics" and self.service.metrics is not None:
                body, ctype = self.service.metrics.render()
                self._send(200, body, ctype)
            elif path == "/":
                self._json(200, {"endpoints": ["/health", "/status", "/metrics"]})
            else:
                self._json(404, {"error": f"no such endpoint {path}"})
        except Exception as exc:  # never let a bug in a probe kill the server thread
            log.exception("health endpoint %s failed", path)
            self._json(500, {"status": "error", "reason": f"{type(exc).__name__}: {exc}"})

    def _json(self, code: int, doc: dict):
        self._send(code, (json.dumps(doc, default=str) + "\n").encode(), "application/json")

    def _send(self, code: int, body: bytes, ctype: str):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # scrapes every 15 s would flood the log
        log.debug("health %s - %s", self.address_string(), fmt % args)


class HealthServer:
    def __init__(self, service: HealthService, host: str, port: int):
        handler = type("HealthHandler", (_Handler,), {"service": service})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="HealthServer",
                                       daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_health(service: HealthService, port: int) -> HealthServer | None:
    """Serve `service` on `port` (0: disabled). A busy port is logged, not fatal: the worker
    still does its job, and monitoring shows this target as down."""
    if port == 0:
        log.info("health server disabled (HEALTH_CHECK_PORT=0)")
        return None
    host = os.environ.get("HEALTH_CHECK_HOST", "0.0.0.0")
    try:
        server = HealthServer(service, host, port).start()
    except OSError as exc:
        log.error("health server cannot listen on %s:%d (%s): another worker of this queue on "
                  "this host? Set HEALTH_CHECK_PORT to a free port (0 disables it). Running "
                  "without /health and /metrics.", host, port, exc.strerror or exc)
        return None
    log.info("health server on http://%s:%d (/health /status /metrics)", host, server.port)
    return server
