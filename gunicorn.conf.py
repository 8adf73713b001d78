"""gunicorn settings of the Clarity admin app (systemd/clarity-admin.service).

    gunicorn --config gunicorn.conf.py 'app.admin:create_app()'

Sizes come from the admin settings (environment / .env): GUNICORN_BIND, GUNICORN_WORKERS,
GUNICORN_THREADS, GUNICORN_TIMEOUT, GUNICORN_MAX_REQUESTS; an invalid one stops the master
with a message naming the variable.

Prometheus: every worker process writes its metrics to files in PROMETHEUS_MULTIPROC_DIR
(set in the unit's environment, before any Python starts). The directory is wiped when the
master starts, so a previous run's counters never merge into this one's, and `child_exit`
marks a dead worker's live gauges as gone (client_python's multiprocess guide).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from app.admin.config import get_admin_settings
from worker.settings import SettingsError

try:
    _admin = get_admin_settings()
except SettingsError as _exc:
    sys.exit(f"gunicorn.conf.py: {_exc}")

wsgi_app = "app.admin:create_app()"
bind = [os.environ.get("GUNICORN_BIND") or _admin.gunicorn_bind]
workers = _admin.gunicorn_workers
threads = _admin.gunicorn_threads
worker_class = "gthread" if threads > 1 else "sync"
timeout = _admin.gunicorn_timeout
graceful_timeout = 30
keepalive = 5  # nginx keeps upstream connections alive (see nginx/clarity-admin.conf.j2)
max_requests = _admin.gunicorn_max_requests
max_requests_jitter = max_requests // 10 if max_requests else 0
# Never preload: each worker opens its own Redis pool after the fork.
preload_app = False
# As long a request line as nginx passes (large_client_header_buffers 8k): nginx, not
# gunicorn, refuses a longer one, and answers in JSON.
limit_request_line = 8190
umask = 0o007  # the socket is for nginx (group clarity), nobody else
# The app applies X-Forwarded-* itself (ProxyFix, exactly one hop); gunicorn must not too.
forwarded_allow_ips = ""
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
access_log_format = ('{"remote":"%({x-forwarded-for}i)s","method":"%(m)s","path":"%(U)s",'
                     '"status":%(s)s,"bytes":"%(B)s","ms":%(M)s,"agent":"%(a)s"}')
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "clarity-admin"


def _multiproc_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def on_starting(server):
    """Wipe the metrics directory before any worker writes to it."""
    directory = _multiproc_dir()
    if directory is None:
        server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows one worker only")
        return
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    server.log.info("prometheus multiprocess dir %s wiped", directory)


def child_exit(server, worker):
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
