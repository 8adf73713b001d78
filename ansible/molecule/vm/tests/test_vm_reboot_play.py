"""ansible/reboot.yml on the VMs (after test_vm.py's boots): every host rebooted, one at a
time, the next one only once the previous one is healthy; SSH, the way Ansible reaches the
hosts, still works afterwards with the hardened sshd, and a job runs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vmctl  # the scenario's VM controller, beside this directory

pytestmark = pytest.mark.timeout(2400)

ANSIBLE_DIR = Path(__file__).resolve().parents[3]


def wall_clock(vm: vmctl.VM, command: str) -> datetime:
    return datetime.fromisoformat(vm.ssh(command).stdout.strip())


def test_reboot_play_reboots_one_host_at_a_time_health_gated():
    vms = {name: vmctl.VM(name) for name in ("redis1", "worker1")}
    before = {name: vm.boot_id() for name, vm in vms.items()}
    for vm in vms.values():
        vm.close_master()
    result = subprocess.run(
        ["ansible-playbook", "--inventory", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]),
         str(ANSIBLE_DIR / "reboot.yml"), "-e", "clarity_reboot_all=true",
         # A VM has no BMC for openipmi (as in test_vm.py).
         "-e", json.dumps({"clarity_reboot_ignored_failed_units": ["openipmi.service"]})],
        capture_output=True, text=True, check=False, timeout=2000)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    after = {name: vm.wait_for_ssh() for name, vm in vms.items()}  # the key still works
    assert all(after[name] != before[name] for name in vms), (before, after)
    # serial: 1, health-gated: the second host went down only after the first one was back
    # up (multi-user.target reached, then the play's health checks passed).
    reboot_task = result.stdout.split("TASK [Reboot and wait for the host to come back]")
    order = [line.split("[", 1)[1].split("]")[0] for part in reboot_task[1:]
             for line in part.splitlines()[:8] if line.startswith("changed: [")]
    assert sorted(order) == sorted(vms), result.stdout[-4000:]
    first, second = vms[order[0]], vms[order[1]]
    first_up = wall_clock(first, "date -d \"$(systemctl show -P ActiveEnterTimestamp "
                                 "multi-user.target)\" --iso-8601=seconds")
    second_boot = wall_clock(second, "date -d \"$(uptime -s)\" --iso-8601=seconds")
    assert first_up < second_boot, (order, first_up, second_boot)
    # Every health gate ran, for the host it belongs to.
    for task in ("Check that Redis answers PING", "Check that every worker on the host reports healthy",
                 "Check that no service failed"):
        assert f"TASK [{task}]" in result.stdout, task
    # A job still runs, through the worker host's hardened SSH.
    worker = vms["worker1"]
    exec_start = worker.ssh("systemctl show --property=ExecStart --value "
                            "clarity-worker@sync.service").stdout
    clarity = exec_start.split("path=")[1].split()[0]
    out = worker.ssh("set -a && . /etc/clarity/worker.env && set +a && "
                     f"{clarity} enqueue sync ping {shlex.quote(json.dumps({'echo': 'reboot-play'}))} "
                     "--wait 180", timeout=300).stdout
    assert json.loads(out)["state"] == "completed", out
