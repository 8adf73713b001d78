#!/usr/bin/env python3
"""Start, stop, reboot and power-cycle the `vm` scenario's qemu virtual machines.

Used by create.yml and destroy.yml (as a command) and by the verifier (imported), so that
the VMs are started one way only. Standard library only.

Each VM boots the image that `.ci/vm-image.sh` built (CLARITY_VM_IMAGE: base.img, vmlinuz,
initrd.img, the root SSH key and the pinned host key) through qemu's direct kernel boot, on
a qcow2 copy-on-write overlay of its own. It has two NICs:

* eth0, qemu's user-mode network: SSH forwarded from 127.0.0.1 only (a port picked at first
  boot and kept across power cycles), and NAT to the Debian mirror for apt;
* eth1, a VDE switch on a unix socket (no IP traffic on the controller at all): the fleet's
  private network, where each VM gets the static address of its `clarity_private_address`.

The controller also serves its clock over NTP on 127.0.0.1:123, which the VMs reach as
10.0.2.2 through their user-mode NIC (NtpServer): time sync is proven against a server.

State (CLARITY_VM_STATE, default: Molecule's ephemeral directory + /vms): NAME.qcow2,
NAME.json (SSH port, address), NAME.pid (qemu, written by qemu), NAME.console.log (serial
console, appended across boots), switch/ and switch.pid (the VDE switch), ntp.pid.

Accelerator: KVM only if a probe VM boots to SSH with it on this machine (a guest kernel
can hang in early boot under nested KVM), TCG otherwise; the result is kept beside the
images per qemu version, host kernel and guest kernel. CLARITY_VM_ACCEL=tcg|kvm skips it.

    vmctl.py up NAME=ADDRESS...     start the switch and the NTP server, boot (or resume) VMs,
                                    wait for SSH, give each its private address and host name;
                                    print Molecule's instance config
    vmctl.py destroy                stop every VM of the state directory, the switch and the
                                    NTP server; remove everything
    vmctl.py probe                  which accelerator works here (prints tcg or kvm)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMORY_MB = int(os.environ.get("CLARITY_VM_MEMORY_MB", "1024"))
CPUS = int(os.environ.get("CLARITY_VM_CPUS", "2"))
# Under TCG on a busy 2-core machine a boot takes 20-90 s; a probe boot under KVM that has
# not answered in this long has hung.
BOOT_TIMEOUT = float(os.environ.get("CLARITY_VM_BOOT_TIMEOUT", "420"))
PROBE_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 240.0
HOST_KEY_ALIAS = "clarity-vm"
PRIVATE_PREFIX = 24


class VMError(RuntimeError):
    """A VM could not be started, reached or stopped; the message says why."""


def image_dir() -> Path:
    value = os.environ.get("CLARITY_VM_IMAGE", "")
    if not value:
        raise VMError(
            "CLARITY_VM_IMAGE is not set: run the scenario through `.ci/molecule.sh vm`, or "
            "export CLARITY_VM_IMAGE=$(.ci/vm-image.sh)"
        )
    path = Path(value)
    missing = [n for n in ("base.img", "vmlinuz", "initrd.img", "id_ed25519", "known_hosts")
               if not (path / n).is_file()]
    if missing:
        raise VMError(f"VM image {path} lacks {', '.join(missing)}: rebuild with .ci/vm-image.sh")
    return path


def state_dir() -> Path:
    value = os.environ.get("CLARITY_VM_STATE")
    if not value:
        ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
        if not ephemeral:
            raise VMError("set CLARITY_VM_STATE (or run under Molecule)")
        value = os.path.join(ephemeral, "vms")
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_tools() -> None:
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"),
                          ("vde_switch", "vde2"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            raise VMError(f"{tool} is not installed (Debian package {package})")


def _pid_running(pidfile: Path, marker: str) -> int | None:
    """The pid in `pidfile` if that process is alive and its command line names `marker`.

    The marker (the VM's overlay or the switch's socket) makes sure a pid reused by an
    unrelated process after a crash is never signalled.
    """
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def _stop_pid(pid: int, timeout: float = 20.0) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Switch:
    """The VDE switch of the private network: a unix socket directory, nothing on IP."""

    def __init__(self, state: Path) -> None:
        self.sock = state / "switch"
        self.pidfile = state / "switch.pid"

    def pid(self) -> int | None:
        return _pid_running(self.pidfile, str(self.sock))

    def start(self) -> None:
        if self.pid():
            return
        subprocess.run(
            ["vde_switch", "--sock", str(self.sock), "--daemon", "--pidfile", str(self.pidfile)],
            check=True, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not (self.sock / "ctl").exists():
            if time.monotonic() > deadline:
                raise VMError(f"vde_switch did not create {self.sock}/ctl")
            time.sleep(0.1)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            _stop_pid(pid)
        shutil.rmtree(self.sock, ignore_errors=True)
        self.pidfile.unlink(missing_ok=True)


class NtpServer:
    """The test network's NTP server: the controller's clock, over SNTP (RFC 4330).

    It listens on the controller's 127.0.0.1:123, which qemu's user-mode network shows the
    VMs as 10.0.2.2:123 (the scenario's hosts get `common_ntp_servers: [10.0.2.2]`), so
    timesyncd really synchronises, as against a data centre's own NTP servers. Nothing
    outside the controller's loopback sees it.
    """

    ADDRESS = ("127.0.0.1", 123)
    NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

    def __init__(self, state: Path) -> None:
        self.pidfile = state / "ntp.pid"
        self.marker = f"ntp-serve {self.pidfile}"

    def pid(self) -> int | None:
        return _pid_running(self.pidfile, self.marker)

    def start(self) -> None:
        if self.pid():
            return
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(self.ADDRESS)
        except OSError as exc:
            raise VMError(f"cannot serve NTP to the VMs on 127.0.0.1:123 ({exc}): another NTP "
                          "server holds it") from exc
        finally:
            probe.close()
        log = self.pidfile.with_suffix(".log").open("a")
        subprocess.Popen(
            [sys.executable, __file__, "ntp-serve", str(self.pidfile)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.pid():
            if time.monotonic() > deadline:
                raise VMError("the NTP server did not start; see " + log.name)
            time.sleep(0.1)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            _stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)

    @classmethod
    def timestamp(cls, seconds: float) -> bytes:
        whole = int(seconds)
        fraction = int((seconds - whole) * 2**32)
        return struct.pack("!II", whole + cls.NTP_EPOCH_OFFSET, fraction)

    @classmethod
    def reply(cls, request: bytes, received: float) -> bytes | None:
        """The server's answer to one client request, or None for anything else."""
        if len(request) < 48 or request[0] & 0b111 != 3:  # mode 3: client
            return None
        version = (request[0] >> 3) & 0b111
        header = struct.pack(
            "!BBbbII4s",
            (version << 3) | 4,  # leap 0 (synchronised), the client's version, mode 4: server
            2,                   # stratum 2: synchronised to something (0 and 16 mean not)
            request[2],          # poll interval, as asked
            -20,                 # precision, about a microsecond
            0, 0,                # root delay, root dispersion
            b"LOCL",
        )
        # Origin = the client's transmit timestamp: how the client matches the reply.
        return (header + cls.timestamp(received - 1) + request[40:48]
                + cls.timestamp(received) + cls.timestamp(time.time()))

    def serve(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(self.ADDRESS)
        self.pidfile.write_text(f"{os.getpid()}\n")
        while True:
            request, client = sock.recvfrom(512)
            answer = self.reply(request, time.time())
            if answer:
                sock.sendto(answer, client)


class VM:
    """One VM: its overlay, its qemu process, SSH to it."""

    def __init__(self, name: str, state: Path | None = None, image: Path | None = None) -> None:
        self.name = name
        self.state = state or state_dir()
        self.image = image or image_dir()
        self.overlay = self.state / f"{name}.qcow2"
        self.pidfile = self.state / f"{name}.pid"
        self.console = self.state / f"{name}.console.log"
        self.meta_file = self.state / f"{name}.json"

    # --- bookkeeping -------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except FileNotFoundError:
            return {}

    def _save_meta(self, **values) -> None:
        self.meta_file.write_text(json.dumps({**self.meta, **values}))

    @property
    def ssh_port(self) -> int:
        return int(self.meta["ssh_port"])

    @property
    def address(self) -> str:
        return self.meta["address"]

    def pid(self) -> int | None:
        return _pid_running(self.pidfile, str(self.overlay))

    def instance_config(self) -> dict:
        """What Molecule's inventory needs to reach this VM."""
        return {
            "instance": self.name,
            "address": "127.0.0.1",
            "port": self.ssh_port,
            "user": "root",
            "identity_file": str(self.image / "id_ed25519"),
        }

    # --- SSH ---------------------------------------------------------------------------
    @property
    def control_path(self) -> Path:
        return self.state / f"{self.name}.ssh"

    def ssh_options(self, multiplex: bool = False) -> list[str]:
        """ssh(1) options for root on this VM.

        `multiplex` shares one connection between commands (a new SSH handshake costs a
        second or more under TCG); every reboot or power-off closes it first
        (close_master), so no command ever waits on a connection to a previous boot.
        """
        if multiplex:
            control = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                       "-o", "ControlPersist=300"]
        else:
            control = ["-o", "ControlPath=none"]
        return [*control,
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-i", str(self.image / "id_ed25519"),
            "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
            "-o", f"UserKnownHostsFile={self.image / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=6",
            "-o", "LogLevel=ERROR",
        ]

    def close_master(self) -> None:
        """Stop the shared connection of ssh_options(multiplex=True), if there is one."""
        if self.control_path.exists():
            subprocess.run(["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit",
                            "root@127.0.0.1"], check=False, capture_output=True, timeout=30)

    def ssh(self, command: str, *, check: bool = True, timeout: float = 300,
            ) -> subprocess.CompletedProcess:
        argv = ["ssh", *self.ssh_options(), "-p", str(self.ssh_port), "root@127.0.0.1", command]
        result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise VMError(f"{self.name}: `{command}` exited {result.returncode}: "
                          f"{result.stdout}{result.stderr}")
        return result

    def boot_id(self) -> str | None:
        """The running kernel's boot id, or None while SSH does not answer."""
        try:
            result = self.ssh("cat /proc/sys/kernel/random/boot_id", check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_ssh(self, timeout: float = BOOT_TIMEOUT, not_boot: str | None = None) -> str:
        """Wait until root can log in (on a boot other than `not_boot`); the boot id."""
        start = time.monotonic()
        while True:
            boot = self.boot_id()
            if boot and boot != not_boot:
                self._save_meta(last_boot_seconds=round(time.monotonic() - start, 1))
                return boot
            if not self.pid():
                raise VMError(f"{self.name}: qemu exited before SSH answered; last console lines:"
                              f"\n{self.console_tail()}")
            if time.monotonic() - start > timeout:
                raise VMError(
                    f"{self.name}: no SSH login within {timeout:.0f} s "
                    f"(accelerator {self.meta.get('accel')}); last console lines:\n"
                    f"{self.console_tail()}")
            time.sleep(2)

    # --- lifecycle ---------------------------------------------------------------------
    def qemu_argv(self, accel: str, switch: Switch | None) -> list[str]:
        octet = int(self.address.rsplit(".", 1)[1]) if self.meta.get("address") else 1
        accel_args = ["-accel", "kvm"] if accel == "kvm" else ["-accel", "tcg,thread=multi"]
        argv = [
            "qemu-system-x86_64", "-name", self.name, *accel_args,
            "-smp", str(CPUS), "-m", str(MEMORY_MB),
            "-display", "none", "-monitor", "none",
            "-chardev", f"file,id=console,path={self.console},append=on",
            "-serial", "chardev:console",
            "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0",
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe",
            "-object", "rng-random,id=rng,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng",
            "-netdev", f"user,id=wan,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", f"virtio-net-pci,netdev=wan,mac=52:54:00:00:00:{octet:02x}",
        ]
        if switch is not None:
            argv += [
                "-netdev", f"vde,id=private,sock={switch.sock}",
                "-device", f"virtio-net-pci,netdev=private,mac={self.private_mac()}",
            ]
        return [*argv, "-daemonize", "-pidfile", str(self.pidfile)]

    def private_mac(self) -> str:
        octet = int(self.address.rsplit(".", 1)[1])
        return f"52:54:00:12:34:{octet:02x}"

    def power_on(self, accel: str, switch: Switch | None) -> None:
        """Start qemu (if it is not running); returns once the guest is starting."""
        if self.pid():
            return
        if not self.overlay.exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                 "-b", str(self.image / "base.img"), str(self.overlay)],
                check=True,
            )
        if "ssh_port" not in self.meta:
            self._save_meta(ssh_port=_free_port())
        self._save_meta(accel=accel)
        with self.console.open("a") as console:
            console.write(f"\n===== vmctl: power on {self.name} ({accel}) at {time.ctime()}\n")
        result = subprocess.run(self.qemu_argv(accel, switch), check=False, capture_output=True,
                                text=True,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise VMError(f"{self.name}: qemu failed to start: {result.stderr.strip()}")

    def start_reboot(self) -> str:
        """`systemctl reboot` inside the guest (qemu keeps running); the old boot id."""
        old = self.boot_id()
        if old is None:
            raise VMError(f"{self.name}: not reachable before reboot")
        self.close_master()
        self.ssh("systemctl reboot", check=False, timeout=30)
        return old

    def reboot(self) -> str:
        """Reboot and wait for the new boot to answer SSH; its boot id."""
        return self.wait_for_ssh(not_boot=self.start_reboot())

    def power_off(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """A clean `systemctl poweroff`; returns when qemu has exited."""
        pid = self.pid()
        if not pid:
            return
        self.close_master()
        self.ssh("systemctl poweroff", check=False, timeout=30)
        deadline = time.monotonic() + timeout
        while self.pid():
            if time.monotonic() > deadline:
                raise VMError(f"{self.name}: still running {timeout:.0f} s after poweroff; last "
                              f"console lines:\n{self.console_tail()}")
            time.sleep(1)

    def kill(self) -> None:
        self.close_master()
        pid = self.pid()
        if pid:
            _stop_pid(pid)

    def remove(self) -> None:
        self.kill()
        for path in (self.overlay, self.pidfile, self.console, self.meta_file):
            path.unlink(missing_ok=True)

    def configure(self, address: str) -> None:
        """Give the guest its host name and its private address (as a provider would)."""
        script = f"""
set -e
test "$(cat /sys/class/net/eth1/address)" = {self.private_mac()}
echo {self.name} > /etc/hostname
hostname {self.name}
sed -i '/^127.0.1.1 /d' /etc/hosts
echo '127.0.1.1 {self.name}' >> /etc/hosts
cat > /etc/network/interfaces.d/private <<EOF
# The fleet's private network (VDE switch); written by vmctl.py at first boot.
auto eth1
iface eth1 inet static
    address {address}/{PRIVATE_PREFIX}
EOF
ifquery --state eth1 >/dev/null || ifup eth1
"""
        self.ssh(f"sh -c {shlex.quote(script)}")


# --- accelerator ---------------------------------------------------------------------------
def qemu_version() -> str:
    return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=True).stdout.splitlines()[0]


def probe_accel(image: Path | None = None) -> tuple[str, str]:
    """(accelerator, why): KVM if a throwaway VM boots to SSH with it, else TCG."""
    forced = os.environ.get("CLARITY_VM_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise VMError(f"CLARITY_VM_ACCEL must be kvm or tcg, not {forced!r}")
        return forced, "CLARITY_VM_ACCEL"
    image = image or image_dir()
    # Kept beside the images, not in one: a new image (package lists changed) boots the
    # same kernel build on the same qemu, and a probe costs a minute when KVM hangs.
    key = {"qemu": qemu_version(), "host_kernel": platform.release(),
           "guest_kernel_bytes": (image / "vmlinuz").stat().st_size}
    cache = image.parent / "accel.json"
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return cached["accel"], cached["why"] + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        accel, why = "tcg", "no usable /dev/kvm"
    else:
        with tempfile.TemporaryDirectory(prefix="probe-", dir=image) as tmp:
            vm = VM("kvm-probe", Path(tmp), image)
            vm._save_meta(address="10.77.0.254")
            start = time.monotonic()
            try:
                vm.power_on("kvm", None)
                vm.wait_for_ssh(timeout=PROBE_TIMEOUT)
                accel = "kvm"
                why = f"a probe VM booted to SSH under KVM in {time.monotonic() - start:.0f} s"
            except VMError as exc:
                last = [line for line in vm.console_tail().splitlines()
                        if line.strip() and not line.startswith("===== vmctl")][-1:]
                accel = "tcg"
                why = (f"a probe VM under KVM failed: {str(exc).splitlines()[0]} "
                       f"{' '.join(last) or '(the guest printed nothing)'}")
            finally:
                vm.kill()
    cache.write_text(json.dumps({"key": key, "accel": accel, "why": why}))
    return accel, why


# --- commands ------------------------------------------------------------------------------
def up(pairs: list[str]) -> list[dict]:
    require_tools()
    state = state_dir()
    accel, why = probe_accel()
    print(f"accelerator: {accel} ({why})", file=sys.stderr)
    switch = Switch(state)
    switch.start()
    NtpServer(state).start()
    vms = []
    for pair in pairs:
        name, _, address = pair.partition("=")
        if not address:
            raise VMError(f"expected NAME=ADDRESS, got {pair!r}")
        vm = VM(name, state)
        vm._save_meta(address=address)
        vm.power_on(accel, switch)
        vms.append(vm)
    for vm in vms:
        vm.wait_for_ssh()
        vm.configure(vm.address)
    return [vm.instance_config() for vm in vms]


def destroy() -> None:
    state = state_dir()
    for meta in sorted(state.glob("*.json")):
        VM(meta.stem, state, image=Path(os.environ.get("CLARITY_VM_IMAGE", "/nonexistent"))).remove()
    Switch(state).stop()
    NtpServer(state).stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="boot VMs, wait for SSH, print the instance config")
    up_parser.add_argument("vms", nargs="+", metavar="NAME=ADDRESS")
    sub.add_parser("destroy", help="stop and remove every VM and the switch")
    sub.add_parser("probe", help="print the accelerator that boots a VM here")
    serve = sub.add_parser("ntp-serve", help="(internal) the NTP server that `up` starts")
    serve.add_argument("pidfile", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "ntp-serve":
            NtpServer(args.pidfile.parent).serve()
        elif args.command == "up":
            print(json.dumps(up(args.vms)))
        elif args.command == "destroy":
            destroy()
        else:
            accel, why = probe_accel()
            print(accel)
            print(why, file=sys.stderr)
    except VMError as exc:
        print(f"vmctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
