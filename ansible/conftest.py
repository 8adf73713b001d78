"""Shared helpers for the Molecule testinfra verifiers (pytest finds this from any scenario).

Containers have python3 but no curl: HTTP checks run a small Python client on the host under
test, so they see what a client on that host sees (its addresses, its firewall).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import testinfra

ANSIBLE_DIR = Path(__file__).resolve().parent

_HTTP = r"""
import http.client, json, socket, ssl, sys
method, url, headers, sock_path, count, body = json.loads(sys.argv[1])
scheme, _, rest = url.partition("://")
hostport, _, path = rest.partition("/")
statuses = []
for _ in range(count):
    if sock_path:
        conn = http.client.HTTPConnection("localhost", timeout=10)
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.settimeout(10)
        conn.sock.connect(sock_path)
    elif scheme == "https":
        conn = http.client.HTTPSConnection(hostport, timeout=10,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(hostport, timeout=10)
    conn.request(method, "/" + path, body=body, headers=headers)
    resp = conn.getresponse()
    body = resp.read().decode(errors="replace")
    statuses.append([resp.status, dict(resp.getheaders()), body])
    conn.close()
print(json.dumps(statuses))
"""


def podman_host(name: str):
    """A testinfra host for the container `name` (scenarios name containers after hosts)."""
    return testinfra.get_host(f"podman://{name}")


def http(host, url, headers=None, unix_socket=None, method="GET", count=1, body=None):
    """Requests made from inside `host`: a list of (status, headers, body), one per request."""
    args = json.dumps([method, url, headers or {}, unix_socket, count, body])
    result = host.run(f"python3 -c {shlex.quote(_HTTP)} {shlex.quote(args)}")
    assert result.rc == 0, result.stderr
    return [tuple(r) for r in json.loads(result.stdout)]


def http_once(host, url, **kwargs):
    return http(host, url, **kwargs)[0]


# The most exposure (systemd-analyze security, 0-10) a unit the roles install may have.
MAX_EXPOSURE = 2.5


def unit_exposure(host, unit: str) -> float:
    """`systemd-analyze security UNIT`'s overall exposure level, as the host's systemd sees
    the unit (with every drop-in); printed so the verifier's log holds the measurement."""
    result = host.run(f"systemd-analyze security --no-pager {unit}")
    assert result.rc == 0, result.stderr
    exposure = float(result.stdout.rsplit(f"Overall exposure level for {unit}: ", 1)[1].split()[0])
    print(f"systemd-analyze security {unit}: {exposure}")
    return exposure


def wait_for(predicate, timeout, message="condition", interval=1.0):
    """Poll `predicate` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {message}"
        time.sleep(interval)


def run_playbook(scenario: str, *args: str, timeout: int) -> tuple[subprocess.CompletedProcess, float]:
    """ansible-playbook on the scenario's hosts, as `molecule converge` runs it; with its wall
    time in seconds. The whole output goes beside $CLARITY_FLEET_REPORT when that is set."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    started = time.monotonic()
    result = subprocess.run(
        ["ansible-playbook", "--inventory", str(inventory), *args],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "false", "ANSIBLE_NOCOLOR": "1"},
    )
    seconds = time.monotonic() - started
    if os.environ.get("CLARITY_FLEET_REPORT"):
        name = "-".join(a.strip("-").replace("/", "_").replace("=", "_") for a in args)[:100]
        log = Path(os.environ["CLARITY_FLEET_REPORT"]).with_name(f"{scenario}-playbook-{name}.log")
        log.write_text(f"ansible-playbook {' '.join(args)}: rc={result.returncode}, "
                       f"{seconds:.0f} s\n{result.stdout}\n{result.stderr}")
    return result, seconds


# --- TLS between hosts (the clarity_tls role; docs/deploy.md "TLS between hosts") ---------

TLS_DIR = "/etc/clarity/tls"
_REDIS_PROBE = r"""
import socket, ssl, sys
target, port, mode, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
try:
    sock = socket.create_connection((target, port), timeout=5)
    if mode == "tls":
        # As the Python clients connect (REDIS_TLS_CHECK_HOSTNAME): the fleet's CA, and the
        # server's certificate must name the address connected to.
        ctx = ssl.create_default_context(cafile=sys.argv[6])
        if cert:
            ctx.load_cert_chain(cert, key)
        sock = ctx.wrap_socket(sock, server_hostname=target)
    sock.sendall(b"PING\r\n")
    print(sock.recv(200).decode(errors="replace").strip() or "EOF")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def redis_probe(host, target: str, port: int, tls: bool = True, cert: str = f"{TLS_DIR}/host.crt",
                key: str = f"{TLS_DIR}/host.key", ca: str = f"{TLS_DIR}/ca.crt") -> str:
    """PING sent from `host` to `target`:`port`, plain or over TLS with a client certificate
    ("" for none), as root: Redis' first reply line ("-NOAUTH ...": it answered), or the
    exception the client got (ConnectionRefusedError, SSLError, TimeoutError, ...)."""
    args = " ".join(shlex.quote(a) for a in (target, str(port), "tls" if tls else "plain",
                                               cert, key, ca))
    result = host.run(f"python3 -c {shlex.quote(_REDIS_PROBE)} {args}")
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def stranger_certificate(host) -> tuple[str, str]:
    """A client certificate and key from a CA the fleet does not know, made on `host` now:
    their paths (in a fresh temporary directory)."""
    made = host.run(
        "set -e; d=$(mktemp -d); cd $d; "
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
        "-out ca.crt -days 2 -subj /CN=stranger-ca 2>/dev/null; "
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout c.key "
        "-out c.csr -subj /CN=stranger 2>/dev/null; "
        "openssl x509 -req -in c.csr -CA ca.crt -CAkey ca.key -days 1 -out c.crt 2>/dev/null; "
        "echo $d")
    assert made.rc == 0, made.stderr
    directory = made.stdout.strip()
    return f"{directory}/c.crt", f"{directory}/c.key"


def served_serial(host, address: str, port: int = 6380) -> str:
    """The serial of the certificate the node on `host` presents on `port` (checked against
    the fleet's CA and the address connected to, as the Python clients check it)."""
    tls = "/etc/clarity/tls"
    out = host.run(
        f"openssl s_client -connect {address}:{port} -CAfile {tls}/ca.crt -verify_return_error "
        f"-verify_ip {address} -cert {tls}/host.crt -key {tls}/host.key </dev/null 2>/dev/null "
        "| openssl x509 -noout -serial")
    assert out.rc == 0, out.stdout + out.stderr
    return out.stdout.strip().split("=", 1)[1]
