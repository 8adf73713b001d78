"""The systemd units in systemd/: they parse, and they keep the promises the design makes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from worker.settings import Settings

UNITS = Path(__file__).resolve().parents[2] / "systemd"
VENV_BIN = "/opt/clarity/current/bin/"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize(
    "name", ["clarity-worker@.service", "clarity-admin.service", "clarity-redis-thp.service",
             "clarity-legacy-poller.service", "clarity-address-online@.service"]
)
def test_unit_passes_systemd_analyze_verify(name, tmp_path):
    # The venv exists only on deployed hosts (the Molecule verifiers check the real thing
    # there); here its binaries are stand-ins at another path.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for binary in ("clarity", "gunicorn"):
        (stubs / binary).write_text("#!/bin/sh\n")
        (stubs / binary).chmod(0o755)
    unit = tmp_path / name
    unit.write_text((UNITS / name).read_text().replace(VENV_BIN, f"{stubs}/"))
    target = tmp_path / name.replace("@.", "@sync.") if "@." in name else unit
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(target)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


# Our units, as their instances are named on the hosts.
EXPOSED_UNITS = {
    "clarity-redis-thp.service": "clarity-redis-thp.service",
    "clarity-tls-expiry.service": "clarity-tls-expiry.service",
    "clarity-worker@.service": "clarity-worker@sync.service",
    "clarity-admin.service": "clarity-admin.service",
    "clarity-legacy-poller.service": "clarity-legacy-poller.service",
    "clarity-address-online@.service": "clarity-address-online@10.0.10.11.service",
}


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
@pytest.mark.parametrize("name", sorted(EXPOSED_UNITS))
def test_unit_exposure_is_at_most_2_5(name, tmp_path):
    """systemd-analyze security, offline, on the unit file alone (the Molecule verifiers
    measure the installed units again, with their drop-ins, on a running systemd)."""
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / name).write_text((UNITS / name).read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={tmp_path}",
         "--threshold=25", "--no-pager", EXPOSED_UNITS[name]],
        check=False, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level" in result.stdout


def test_worker_stops_gracefully_within_its_stop_timeout():
    service = _unit("clarity-worker@.service")["Service"]
    assert service["KillSignal"] == "SIGINT"  # Huey's SIGTERM interrupts running tasks
    assert service["Type"] == "exec"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    shutdown_default = Settings.model_fields["shutdown_timeout"].default
    assert _seconds(service["TimeoutStopSec"]) > shutdown_default + 15


def test_worker_reads_the_shared_and_per_queue_env_files_as_clarity():
    text = (UNITS / "clarity-worker@.service").read_text()
    assert "EnvironmentFile=/etc/clarity/worker.env\n" in text
    assert "EnvironmentFile=/etc/clarity/worker-%i.env\n" in text
    assert "ExecStart=/opt/clarity/current/bin/clarity worker --queue %i\n" in text
    assert "User=clarity\n" in text
    assert "NoNewPrivileges=yes\n" in text
    assert "ProtectSystem=strict\n" in text


def test_admin_prometheus_dir_is_inside_the_runtime_directory():
    service = _unit("clarity-admin.service")["Service"]
    assert "clarity-admin/prometheus" in service["RuntimeDirectory"].split()
    assert "PROMETHEUS_MULTIPROC_DIR=/run/clarity-admin/prometheus" in service["Environment"]
    assert "unix:/run/clarity-admin/gunicorn.sock" in service["ExecStart"]


def test_thp_unit_runs_a_shell_before_redis_and_skips_containers():
    unit = _unit("clarity-redis-thp.service")
    assert unit["Service"]["ExecStart"].startswith("/bin/sh -c 'echo never > ")
    assert "redis-server.service" in unit["Unit"]["Before"].split()
    assert unit["Unit"]["ConditionVirtualization"] == "!container"
