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
