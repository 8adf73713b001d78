"""What every server of the dev stack shares: ports, supervised children, the real clock."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Resolved once here, not in the child: between fork and exec only this direct call runs
# (no dlopen, no import), which is safe even when the parent has threads.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _die_with_parent():  # runs in the child between fork and exec
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(below: int | None = None) -> int:
    """A TCP port nobody listens on now (the kernel's pick), optionally under `below`."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if below is None or port < below:
            return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def real_clock_env(env: dict | None = None) -> dict[str, str]:
    """`env` (default: ours) without libfaketime. When the suite runs under `faketime` to
    prove it does not depend on the date, servers that cannot run under it keep the real
    clock (redis-server's allocator recurses into faketime's clock_gettime and it never
    starts); our own Python processes keep the moved clock."""
    env = dict(os.environ if env is None else env)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "faketime" not in p]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    for name in [n for n in env if n.startswith("FAKETIME")]:
        del env[name]
    return env


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    """A server run as our child, in its own session (so one signal reaches everything it
    forks), output to `log`, dying with its parent unless `die_with_parent` is off."""

    name: str
    args: list[str]
    log: Path | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None
    die_with_parent: bool = True
    proc: subprocess.Popen | None = None

    def start(self) -> Child:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None)  # noqa: PLW1509
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def send_signal(self, sig) -> None:
        """To the child alone (a server that forwards it to its own children)."""
        if self.alive:
            self.proc.send_signal(sig)

    def signal_group(self, sig) -> None:
        """To the child and everything it started."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float | None = None) -> bool:
        """True when the child has exited within `timeout` seconds."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0, group: bool = True) -> None:
        """`sig`, then SIGKILL to the whole group if it has not exited within `timeout`;
        the group is killed in any case, so nothing it forked outlives it."""
        if self.proc is None:
            return
        if self.alive:
            (self.signal_group if group else self.send_signal)(sig)
            if not self.wait(timeout):
                self.signal_group(signal.SIGKILL)
                self.wait(10)
        self.signal_group(signal.SIGKILL)
