"""`clarity up`: the one-command local stack, started for real in a subprocess."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

from app.devstack import REPO
from tests.observability.helpers import (
    Output,
    clean_env,
    descendants,
    distinct_ports,
    free_block,
    running,
    scrape,
    value,
)


def test_clarity_up_runs_a_job_end_to_end_and_leaves_nothing_behind(tmp_path):
    redis_port, admin_port = distinct_ports(2)
    health_base = free_block()
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "up", "--no-live", "--interval", "0.5",
         "--redis-port", str(redis_port), "--admin-port", str(admin_port),
         "--health-port-base", str(health_base), "--state-dir", str(state)],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(proc.stdout)
    try:
        out.wait_for("Clarity is up", timeout=120)
        children = descendants(proc.pid)
        assert len(children) >= 6, children  # redis + five workers (+ admin)
        secrets_file = state / "dev-secrets.env"
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        text = "".join(out.seen)
        assert f"http://127.0.0.1:{health_base}/health" in text
        assert f"redis://127.0.0.1:{redis_port}/0" in text
        password = next(line.split("=", 1)[1] for line in secrets_file.read_text().splitlines()
                        if line.startswith("REDIS_PASSWORD="))
        assert password not in text  # the Redis password is never printed

        # A job through the documented CLI path, with the stack's settings file.
        result = subprocess.run(
            [sys.executable, "-m", "app", "enqueue", "sync", "ping", '{"echo": "test"}',
             "--wait", "30"], cwd=REPO, env=clean_env(CLARITY_ENV_FILE=str(secrets_file)),
            capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["state"] == "completed"
        metrics = scrape(f"http://127.0.0.1:{health_base}/metrics")
        assert value(metrics, "clarity_jobs_completed_total", queue="sync", task="ping") >= 2
        out.wait_for("sync waiting=0", timeout=10)  # the periodic status lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    text = out.rest()
    assert rc == 0, text
    assert "nothing left running" in text
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(running(p) for p in children):
        time.sleep(0.1)
    assert not [p for p in children if running(p)], "processes left behind"
    for port in (redis_port, health_base, health_base + 4):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # free again


def test_clarity_up_refuses_a_taken_port_and_says_how_to_fix_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app", "up", "--no-live", "--redis-port", str(port),
             "--state-dir", str(tmp_path / "state")], cwd=REPO, env=clean_env(),
            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert f"port {port}" in result.stderr and "--redis-port" in result.stderr
    assert not (tmp_path / "state").exists()  # refused before starting anything


def test_clarity_up_refuses_when_redis_server_is_missing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "app", "up", "--no-live", "--state-dir", str(tmp_path / "s")],
        cwd=REPO, env=clean_env(PATH=str(tmp_path)), capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode != 0
    assert "redis-server is not installed" in result.stderr
    assert "apt-get install -y redis-server" in result.stderr
