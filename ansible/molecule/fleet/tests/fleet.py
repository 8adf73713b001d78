"""Helpers of the fleet verifier: the four hosts, the world outside the fleet, and what an
operator does (the CLI on a host, psql on the database host, ansible-playbook on the
controller with the scenario's own inventory).

Not a conftest.py: ansible/conftest.py is the verifiers' shared one, and a second module
named conftest would shadow it.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import subprocess
from pathlib import Path

from conftest import podman_host, run_playbook, wait_for  # noqa: F401 (wait_for re-exported for the tests)
from outside import Outside

ANSIBLE_DIR = Path(__file__).resolve().parents[3]
KEY = "molecule-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLARITY = "/opt/clarity/current/bin/clarity"
ADMIN_ENV = "set -a && . /etc/clarity/admin.env && set +a && "
APP_HOSTS = ("worker1", "worker2", "admin1")


def hosts():
    """(redis1, worker1, worker2, admin1) as testinfra hosts."""
    return tuple(podman_host(name) for name in ("redis1", "worker1", "worker2", "admin1"))


def address(host) -> str:
    """The host's address on the fleet network (what clarity_private_address defaults to)."""
    return host.run("ip -4 -o route get 1.1.1.1").stdout.split("src ")[1].split()[0]


def gateway(host) -> str:
    """The CI host as the containers see it: their default gateway, the podman bridge."""
    return host.run("ip -4 route show default").stdout.split("via ")[1].split()[0]


_outside: Outside | None = None


def outside_world() -> Outside:
    """The aggregator, SMTP relay and alert receiver the fleet's inventory points at: started
    once for the whole verifier run (they listen on fixed ports), stopped at exit."""
    global _outside
    if _outside is None:
        _outside = Outside(gateway(podman_host("admin1"))).start()
        atexit.register(_outside.stop)
    return _outside


def clarity(host, args: str, env: str = ADMIN_ENV):
    """`clarity ARGS` on `host` with its settings: the testinfra result."""
    return host.run(env + CLARITY + " " + args)


def enqueue_and_wait(host, queue: str, task: str, payload: dict, timeout: int = 90) -> dict:
    """Enqueue from `host` (the admin host's settings) and wait until a worker ran the job."""
    result = clarity(host, f"enqueue {queue} {task} {shlex.quote(json.dumps(payload))} "
                           f"--wait {timeout}")
    assert result.rc == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["state"] == "completed", doc
    return doc


def psql(redis1, sql: str) -> list[list[str]]:
    """Rows of `sql` on the fleet's database (as the postgres superuser, on the database host)."""
    result = redis1.run(
        f"runuser -u postgres -- psql -d clarity -v ON_ERROR_STOP=1 -AtF '|' -c {shlex.quote(sql)}"
    )
    assert result.rc == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines() if line]


def playbook(*args: str, timeout: int = 1200) -> tuple[subprocess.CompletedProcess, float]:
    return run_playbook("fleet", *args, timeout=timeout)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host: {host: {"ok": n, "changed": n, "failed": n, ...}}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        if " : ok=" in line:
            name, _, counters = line.partition(" : ")
            hosts[name.strip()] = {k: int(v) for k, v in
                                   (item.split("=") for item in counters.split())}
    return hosts


def report(line: str) -> None:
    """Figures worth keeping (wall times): printed by .ci/molecule.sh after the run."""
    path = os.environ.get("CLARITY_FLEET_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line.rstrip() + "\n")
    print(line)


def current_release(host) -> str:
    return host.run("readlink /opt/clarity/current").stdout.strip().rsplit("/", 1)[-1]


def main_pids(host, units) -> dict[str, str]:
    return {unit: host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
            for unit in units}
