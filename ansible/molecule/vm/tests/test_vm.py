"""What only a real kernel and a real boot can show, on site.yml's Redis host and worker host.

Every check runs on three boots of the two VMs (the module-scoped `boot` fixture, in order):

* ``converged``: right after `site.yml`;
* ``rebooted``: both VMs rebooted by ``ansible/reboot.yml``, one at a time, health-gated
  (what an operator runs after a kernel update; the play's own checks are below);
* ``worker-first``: both powered off, the worker VM started, Redis's VM started a minute
  after the worker VM answers SSH (a rack power cycle where Redis comes back late).

Nothing is started, loaded or fixed by the tests after a boot: what they see is what the
units, sysctl drop-ins and rulesets installed by the roles did by themselves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vmctl  # the scenario's VM controller, beside this directory

# A boot under TCG, a power cycle and a one-minute wait take minutes, not pytest's default.
pytestmark = pytest.mark.timeout(1800)

REDIS_ADDRESS = "10.77.0.11"
WORKER_ADDRESS = "10.77.0.21"
# On the private network but in no inventory group: the firewall must not let it reach Redis.
STRANGER_ADDRESS = "10.77.0.99"
REDIS_LATE_SECONDS = 60
BOOTS = ["converged", "rebooted", "worker-first"]
MARKER_KEY = "clarity:vm-test:marker"
# The operator ACL user's password in the test vault (inventories/molecule, vault_redis_users).
OPERATOR_PASSWORD = "molecule-redis-password-0123456789abcdef"


def infra(vm: vmctl.VM):
    """A testinfra host for the VM, on one shared SSH connection per boot."""
    return testinfra.get_host(
        f"ssh://root@127.0.0.1:{vm.ssh_port}",
        ssh_extra_args=" ".join(vm.ssh_options(multiplex=True)),
    )


def run(vm: vmctl.VM, command: str) -> str:
    result = infra(vm).run(command)
    assert result.rc == 0, f"{vm.name}: {command}: {result.stdout}{result.stderr}"
    return result.stdout


def unit_property(vm: vmctl.VM, unit: str, prop: str) -> str:
    return run(vm, f"systemctl show --property={prop} --value {unit}").strip()


def redis_cli(vm: vmctl.VM, *args: str) -> str:
    """redis-cli on the Redis host as the operator ACL user (the test vault's password)."""
    command = " ".join(shlex.quote(a) for a in args)
    return run(
        vm,
        f"REDISCLI_AUTH={OPERATOR_PASSWORD} redis-cli --user clarity-operator --no-auth-warning "
        f"--raw {command}",
    ).strip()


def clarity_cli(vm: vmctl.VM) -> str:
    """The `clarity` executable the worker unit runs (wherever the release put it)."""
    exec_start = unit_property(vm, "clarity-worker@sync.service", "ExecStart")
    return re.search(r"path=(\S+)", exec_start).group(1)


@pytest.fixture(scope="module")
def vms():
    return {name: vmctl.VM(name) for name in ("redis1", "worker1")}


@pytest.fixture(scope="module")
def redis1(vms):
    return vms["redis1"]


@pytest.fixture(scope="module")
def worker1(vms):
    return vms["worker1"]


@pytest.fixture(scope="module")
def marker(redis1):
    """A value written to Redis before any reboot; every later boot must still have it."""
    value = uuid.uuid4().hex
    assert redis_cli(redis1, "SET", MARKER_KEY, value) == "OK"
    return value


ANSIBLE_DIR = Path(__file__).resolve().parents[3]


def reboot_with_the_play(vms) -> dict:
    """ansible/reboot.yml on both VMs; returns the boot ids before and after, and its output.

    The play's result is judged by its own test below: whatever it did, both VMs must answer
    SSH again for the boot's other checks.
    """
    before = {name: vm.boot_id() for name, vm in vms.items()}
    for vm in vms.values():
        vm.close_master()
    result = subprocess.run(
        ["ansible-playbook", "--inventory", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]),
         str(ANSIBLE_DIR / "reboot.yml"), "-e", "clarity_reboot_all=true",
         # A VM has no BMC for openipmi (NO_HARDWARE_HERE below).
         "-e", json.dumps({"clarity_reboot_ignored_failed_units": ["openipmi.service"]})],
        capture_output=True, text=True, check=False, timeout=2000)
    after = {name: vm.wait_for_ssh() for name, vm in vms.items()}  # the key still works
    return {"before": before, "after": after, "result": result}


def power_cycle_worker_first(vms, samples: list) -> None:
    """Both off; the worker VM on; Redis's VM on a minute after the worker answers SSH.

    Meanwhile the worker unit's state and health are sampled (into `samples`).
    """
    for vm in vms.values():
        vm.power_off()
    switch = vmctl.Switch(vms["worker1"].state)
    worker, redis = vms["worker1"], vms["redis1"]
    worker.power_on(worker.meta["accel"], switch)
    worker.wait_for_ssh()
    up_at = time.monotonic()
    while time.monotonic() - up_at < REDIS_LATE_SECONDS:
        samples.append(worker_state(worker))
        time.sleep(5)
    redis.power_on(redis.meta["accel"], switch)
    redis.wait_for_ssh()


def worker_state(worker: vmctl.VM) -> dict:
    states = run(worker, "systemctl show --property=ActiveState,SubState,NRestarts "
                         "clarity-worker@sync.service")
    # "<status> <why the consumer is not ok>", or "no answer" before the server listens.
    probe = (
        "import json, urllib.request, urllib.error\n"
        "try:\n"
        "    r = urllib.request.urlopen('http://127.0.0.1:9101/health', timeout=5)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    r = exc\n"
        "except OSError:\n"
        "    print('no answer'); raise SystemExit\n"
        "body = json.loads(r.read() or b'{}')\n"
        "print(r.status, body.get('checks', {}).get('consumer', {}).get('reason', ''))\n"
    )
    health = run(worker, f"python3 -c {shlex.quote(probe)}").strip()
    return {**dict(line.split("=", 1) for line in states.split()), "health": health}


@pytest.fixture(scope="module", params=BOOTS)
def boot(request, vms, marker):
    """Bring both VMs into the boot state named by the parameter (in BOOTS order)."""
    samples: list[dict] = []
    play = None
    if request.param == "rebooted":
        play = reboot_with_the_play(vms)
    elif request.param == "worker-first":
        power_cycle_worker_first(vms, samples)
    for vm in vms.values():
        # Whatever the boot, let systemd finish starting everything before judging.
        run(vm, "systemctl is-system-running --wait || true")
    return {"name": request.param, "worker_samples": samples, "reboot_play": play}


# --- the hosts -----------------------------------------------------------------------------
def test_hosts_are_virtual_machines_with_their_own_kernel(boot, vms):
    for vm in vms.values():
        assert run(vm, "systemd-detect-virt --vm").strip() in ("qemu", "kvm")
        assert infra(vm).run("systemd-detect-virt --container").rc != 0


# openipmi (ipmitool, a recommendation of node_exporter's collectors) loads the drivers of a
# server's BMC; a VM has none, so its init script fails here, as on metal without a BMC.
NO_HARDWARE_HERE = {"openipmi.service"}


def test_every_unit_came_up_by_itself(boot, vms):
    for vm in vms.values():
        failed = run(vm, "systemctl --failed --no-legend --plain").split("\n")
        failed = [line.split()[0] for line in failed if line.strip()]
        assert set(failed) <= NO_HARDWARE_HERE, f"{vm.name}: {failed}"
    assert infra(vms["redis1"]).service("redis-server").is_running
    assert infra(vms["worker1"]).service("clarity-worker@sync").is_running


# --- kernel settings -----------------------------------------------------------------------
def sysctl_file(vm: vmctl.VM, path: str) -> dict[str, str]:
    settings = {}
    for line in run(vm, f"cat {path}").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = " ".join(value.split())
    return settings


def test_every_sysctl_of_the_roles_is_live(boot, redis1, worker1):
    expected = {
        "redis1": {
            **sysctl_file(redis1, "/etc/sysctl.d/90-clarity.conf"),
            **sysctl_file(redis1, "/etc/sysctl.d/99-clarity-redis.conf"),
        },
        "worker1": sysctl_file(worker1, "/etc/sysctl.d/90-clarity.conf"),
    }
    # The design's values, whatever the drop-ins say.
    assert expected["redis1"]["vm.overcommit_memory"] == "1"
    assert expected["redis1"]["net.core.somaxconn"] == "65535"
    assert expected["worker1"]["net.ipv4.tcp_keepalive_time"] == "300"
    for vm in (redis1, worker1):
        for key, value in expected[vm.name].items():
            live = " ".join(run(vm, f"sysctl -n {key}").split())
            assert live == value, f"{vm.name}: {key} is {live}, the roles set {value}"


def test_transparent_huge_pages_are_off_before_redis_starts(boot, redis1):
    for knob in ("enabled", "defrag"):
        value = run(redis1, f"cat /sys/kernel/mm/transparent_hugepage/{knob}")
        assert "[never]" in value, f"{knob}: {value}"
    assert unit_property(redis1, "clarity-redis-thp.service", "Result") == "success"
    thp_done = int(unit_property(redis1, "clarity-redis-thp.service",
                                 "ActiveEnterTimestampMonotonic"))
    redis_started = int(unit_property(redis1, "redis-server.service",
                                      "ExecMainStartTimestampMonotonic"))
    assert 0 < thp_done < redis_started


def test_redis_log_has_no_kernel_warning(boot, redis1):
    # This run of redis-server only (its invocation id). Debian's kernel ships overcommit 0,
    # which Redis warns about at startup (as it does about a low somaxconn); THP "always"
    # is proven off above, since Redis 7 turns THP off for itself when it can.
    invocation = unit_property(redis1, "redis-server.service", "InvocationID")
    log = run(redis1, f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}")
    assert "Ready to accept connections" in log
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert warnings == []


# --- firewall ------------------------------------------------------------------------------
def test_nftables_ruleset_is_loaded_at_boot(boot, vms):
    for vm in vms.values():
        assert infra(vm).service("nftables").is_enabled
        chain = run(vm, "nft list chain inet filter input")
        assert "policy drop;" in chain, chain
    chain = run(vms["redis1"], "nft list chain inet filter input")
    # The Redis TLS port's rule: one source or a set of them (the Redis hosts are sources
    # too, for replication); the worker must be among them. connect_from below proves the
    # effect. The plain port is loopback's: refused to every other host.
    assert "tcp dport 6379 reject with tcp reset" in chain, chain
    redis_rule = next((line for line in chain.splitlines() if "tcp dport 6380 accept" in line), "")
    sources = re.search(r"ip saddr (\{[^}]*\}|\S+)", redis_rule)
    assert sources and WORKER_ADDRESS in sources.group(1).strip("{} ").split(", "), chain


def connect_from(worker: vmctl.VM, source: str, port: int) -> str:
    """From the worker VM, bound to `source`: Redis's first reply line, the SSH banner,
    "timeout" (dropped) or "refused"."""
    probe = (
        "import socket, sys\n"
        "source, port = sys.argv[1], int(sys.argv[2])\n"
        "s = socket.socket()\n"
        "s.settimeout(5)\n"
        "s.bind((source, 0))\n"
        "try:\n"
        f"    s.connect(({REDIS_ADDRESS!r}, port))\n"
        "except TimeoutError:\n"
        "    print('timeout'); sys.exit()\n"
        "except ConnectionRefusedError:\n"
        "    print('refused'); sys.exit()\n"
        "if port == 6380:\n"
        "    print('connected'); sys.exit()\n"
        "if port == 6379:\n"
        "    s.sendall(b'PING\\r\\n')\n"
        "print(s.recv(200).decode(errors='replace').splitlines()[0])\n"
    )
    return run(worker, f"python3 -c {shlex.quote(probe)} {source} {port}").strip()


def test_redis_port_is_open_to_the_worker_host_only(boot, worker1):
    # TLS between hosts: the TLS port lets the worker in, the plain port refuses it.
    assert connect_from(worker1, WORKER_ADDRESS, 6380) == "connected"
    assert connect_from(worker1, WORKER_ADDRESS, 6379) == "refused"
    run(worker1, f"ip address add {STRANGER_ADDRESS}/32 dev eth1")
    try:
        # The stranger's packets do reach the Redis host (SSH answers it)...
        assert connect_from(worker1, STRANGER_ADDRESS, 22).startswith("SSH-2.0-")
        # ...but its firewall drops them on Redis's TLS port (and refuses the plain one).
        assert connect_from(worker1, STRANGER_ADDRESS, 6380) == "timeout"
        assert connect_from(worker1, STRANGER_ADDRESS, 6379) == "refused"
    finally:
        run(worker1, f"ip address del {STRANGER_ADDRESS}/32 dev eth1")


# --- SSH ---------------------------------------------------------------------------------
def ssh_attempt(vm: vmctl.VM, *options: str) -> subprocess.CompletedProcess:
    """A fresh SSH connection from the controller (no shared connection, no key unless the
    options allow it): what sshd answers a client that offers `options`."""
    argv = ["ssh", "-v", "-o", "ControlPath=none", "-o", "BatchMode=yes",
            "-o", f"HostKeyAlias={vmctl.HOST_KEY_ALIAS}",
            "-o", f"UserKnownHostsFile={vm.image / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=30",
            *options, "-p", str(vm.ssh_port), "root@127.0.0.1", "true"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def test_ssh_takes_the_key_only_and_refuses_weak_algorithms(boot, vms):
    """How Ansible reaches the hosts, after the hardening and after every kind of boot."""
    for vm in vms.values():
        assert vm.ssh("true").returncode == 0, vm.name  # the key, as Ansible logs in
        no_key = ssh_attempt(vm, "-o", "PubkeyAuthentication=no",
                             "-o", "PreferredAuthentications=password,keyboard-interactive")
        assert no_key.returncode == 255, no_key.stderr
        assert "Permission denied (publickey)." in no_key.stderr, no_key.stderr
        weak_cipher = ssh_attempt(vm, "-i", str(vm.image / "id_ed25519"), "-c", "aes128-cbc")
        assert "no matching cipher found" in weak_cipher.stderr, weak_cipher.stderr
        weak_kex = ssh_attempt(vm, "-i", str(vm.image / "id_ed25519"),
                               "-o", "KexAlgorithms=diffie-hellman-group14-sha1")
        assert "no matching key exchange method found" in weak_kex.stderr, weak_kex.stderr
        effective = run(vm, "sshd -T -C user=root,host=controller,addr=10.0.2.2")
        assert "\npasswordauthentication no\n" in effective
        assert "\npermitrootlogin without-password\n" in effective
        assert "\nx11forwarding no\n" in effective and "\nallowagentforwarding no\n" in effective


def test_unneeded_kernel_modules_never_load(boot, vms):
    # modprobe runs the `install ... /bin/true` of the role's modprobe.d file instead.
    for vm in vms.values():
        run(vm, "modprobe dccp; modprobe sctp; modprobe usb-storage; true")
        loaded = infra(vm).run("grep -E '^(dccp|sctp|usb_storage) ' /proc/modules").stdout
        assert loaded == "", f"{vm.name}: {loaded}"
        assert "install /bin/true" in run(vm, "modprobe --show-depends dccp")


# --- time ----------------------------------------------------------------------------------
def test_time_is_synchronised_with_the_configured_ntp_server(boot, vms):
    for vm in vms.values():
        timesyncd = infra(vm).service("systemd-timesyncd")
        assert timesyncd.is_enabled and timesyncd.is_running, vm.name
        # common_ntp_servers is the controller (vmctl.py's NTP server, seen as 10.0.2.2).
        deadline = time.monotonic() + 120
        while True:
            status = run(vm, "timedatectl show-timesync --property=ServerAddress --value; "
                             "timedatectl show --property=NTPSynchronized --value").split()
            if status == ["10.0.2.2", "yes"]:
                break
            assert time.monotonic() < deadline, f"{vm.name}: server, synchronised: {status}"
            time.sleep(5)


# --- the fleet after the boot --------------------------------------------------------------
def test_redis_kept_its_data(boot, redis1, marker):
    assert redis_cli(redis1, "GET", MARKER_KEY) == marker


def test_worker_runs_a_job_enqueued_after_the_boot(boot, worker1):
    echo = f"vm-{boot['name']}-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"echo": echo})
    out = run(
        worker1,
        "set -a && . /etc/clarity/worker.env && set +a && "
        f"{clarity_cli(worker1)} enqueue sync ping {shlex.quote(payload)} --wait 120",
    )
    assert json.loads(out)["state"] == "completed", out


@pytest.mark.parametrize("boot", ["worker-first"], indirect=True)
def test_worker_waits_for_a_late_redis_instead_of_exiting(boot):
    # Sampled every few seconds while Redis's VM was still off: the worker kept running
    # (no exit, no restart, so no start limit to hit) and its health said why it waited.
    samples = boot["worker_samples"]
    assert samples, "no sample taken while Redis was down"
    assert [s["ActiveState"] for s in samples] == ["active"] * len(samples), samples
    assert [s["NRestarts"] for s in samples] == ["0"] * len(samples), samples
    answered = [s["health"] for s in samples if s["health"] != "no answer"]
    assert answered, samples
    # Once its health server listens it never stops answering (the process never exits).
    assert [s["health"] for s in samples][-len(answered):] == answered, samples
    assert all(h.startswith("503 waiting for Redis") for h in answered), answered


# --- ansible/reboot.yml --------------------------------------------------------------------
def wall_clock(vm: vmctl.VM, command: str) -> datetime:
    return datetime.fromisoformat(run(vm, command).strip())


@pytest.mark.parametrize("boot", ["rebooted"], indirect=True)
def test_reboot_play_reboots_one_host_at_a_time_health_gated(boot, vms):
    play = boot["reboot_play"]
    result = play["result"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert all(play["after"][name] != play["before"][name] for name in vms), play
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
