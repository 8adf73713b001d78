"""The admin's production path on this machine: nginx (the repo's site template, rendered
with Jinja2, a self-signed certificate from openssl) → gunicorn (gunicorn.conf.py, a unix
socket) → the app → a real Redis. Used by the end-to-end tests, schemathesis, the browser
test and bench/admin_bench.py.

As root (CI) nginx's workers run as root too (`user root;`) so that they can reach the
socket in a private temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jinja2

from app.devstack import REPO
from app.devstack.processes import Child, free_port, real_clock_env

TEMPLATE = REPO / "nginx" / "clarity-admin.conf.j2"
VENV_BIN = Path(sys.executable).parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def render_site(**variables) -> str:
    """Render nginx/clarity-admin.conf.j2 as Ansible would (with its two filters)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=False)
    env.filters["bool"] = _bool
    env.filters["regex_replace"] = lambda value, pattern, repl: re.sub(pattern, repl,
                                                                       str(value))
    values = {
        "ansible_managed": "rendered by app/devstack/web.py",
        "nginx_server_name": "localhost",
        "nginx_listen_ipv6": False,
        "nginx_admin_rate": "50r/s",
        "nginx_admin_burst": 100,
        "nginx_worker_health_targets": [],
    }
    values.update(variables)
    return env.from_string(TEMPLATE.read_text()).render(**values)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "admin.crt", directory / "admin.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


class WebStack:
    """nginx + gunicorn on free ports, in `workdir`. `env`: the app's environment."""

    def __init__(self, workdir: Path, env: dict[str, str], *, nginx_vars: dict | None = None,
                 gunicorn_workers: int = 2, gunicorn_threads: int = 4,
                 nginx_workers: int = 1, access_log: bool = False):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.nginx_vars = nginx_vars or {}
        self.gunicorn_workers = gunicorn_workers
        self.gunicorn_threads = gunicorn_threads
        self.nginx_workers = nginx_workers
        self.access_log = access_log
        self.http_port = free_port()
        self.https_port = free_port()
        self.socket = self.dir / "gunicorn.sock"
        self.gunicorn: Child | None = None
        self.nginx: Child | None = None
        self.cert: Path | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, verify=self.ssl_context(), **kwargs)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def start(self) -> WebStack:
        self.cert, key = make_certificate(self.dir)
        self._start_gunicorn()
        self._start_nginx(key)
        self._wait_ready()
        return self

    def _start_gunicorn(self):
        prom = self.dir / "prometheus"
        prom.mkdir(exist_ok=True)
        (prom / "stale_from_last_run.db").write_bytes(b"stale")  # gunicorn.conf.py wipes it
        env = {**os.environ, **self.env, "PROMETHEUS_MULTIPROC_DIR": str(prom),
               "GUNICORN_WORKERS": str(self.gunicorn_workers),
               "GUNICORN_THREADS": str(self.gunicorn_threads),
               "GUNICORN_ACCESS_LOG": str(self.dir / "gunicorn-access.log")
               if self.access_log else "/dev/null",
               "CLARITY_ENV_FILE": "/nonexistent.env", "PYTHONUNBUFFERED": "1"}
        self.gunicorn = Child("gunicorn", [
            str(VENV_BIN / "gunicorn"), "--config", str(REPO / "gunicorn.conf.py"),
            "--bind", f"unix:{self.socket}"], self.dir / "gunicorn.log", env, cwd=REPO).start()

    def _start_nginx(self, key: Path):
        site = render_site(
            nginx_http_port=self.http_port, nginx_https_port=self.https_port,
            nginx_admin_upstream_socket=str(self.socket),
            nginx_tls_certificate_path=str(self.cert), nginx_tls_key_path=str(key),
            **self.nginx_vars)
        (self.dir / "site.conf").write_text(site)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
            (self.dir / sub).mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        access = f"access_log {self.dir / 'logs' / 'access.log'};" if self.access_log \
            else "access_log off;"
        (self.dir / "nginx.conf").write_text(f"""{user}worker_processes {self.nginx_workers};
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    {access}
    client_body_temp_path {self.dir / 'body'};
    proxy_temp_path {self.dir / 'proxy'};
    fastcgi_temp_path {self.dir / 'fastcgi'};
    uwsgi_temp_path {self.dir / 'uwsgi'};
    scgi_temp_path {self.dir / 'scgi'};
    include {self.dir / 'site.conf'};
}}
""")
        directives = (f"daemon off; pid {self.dir / 'nginx.pid'}; "
                      f"error_log {self.dir / 'logs' / 'error.log'} warn;")
        check = subprocess.run([NGINX, "-t", "-p", str(self.dir), "-c",
                                str(self.dir / "nginx.conf"), "-g", directives],
                               check=False, capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        self.nginx = Child("nginx", [
            NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", directives],
            self.dir / "nginx.out", real_clock_env()).start()

    def _wait_ready(self, timeout: float = 30):
        deadline = time.monotonic() + timeout
        last = None
        with self.client() as client:
            while time.monotonic() < deadline:
                for child in (self.gunicorn, self.nginx):
                    if not child.alive:
                        raise RuntimeError(f"{child.name} exited:\n{self.logs()}")
                try:
                    if client.get("/api/admin/openapi.json").status_code == 200:
                        return
                except httpx.HTTPError as exc:
                    last = exc
                time.sleep(0.1)
        raise RuntimeError(f"stack not ready ({last}):\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for name in ("gunicorn.log", "logs/error.log", "nginx.out"):
            path = self.dir / name
            if path.exists():
                out.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def stop(self):
        # nginx: SIGQUIT is its graceful stop; gunicorn's arbiter stops its workers on TERM.
        for child, sig in ((self.nginx, signal.SIGQUIT), (self.gunicorn, signal.SIGTERM)):
            if child is not None:
                child.stop(sig, timeout=15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def have_e2e_tools() -> str | None:
    """None when nginx and openssl exist, else what is missing."""
    missing = [tool for tool, path in (("nginx", NGINX), ("openssl", "openssl"))
               if shutil.which(path) is None]
    return ", ".join(missing) or None
