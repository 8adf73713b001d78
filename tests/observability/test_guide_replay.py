"""Every command block of the original (BullMQ) guide's "Monitoring and Observability" and
"Troubleshooting" sections, replayed against a running `clarity up` stack (issue 18, item
3), with the documented answers checked.

The blocks are quoted from the guide as written. What a replay must change is applied by
`adapt()` below and listed in the README's "Where we differ from the original guide":
  * ports: the guide's one worker port 3001 is each queue's own health port here
    (9101..9105 by queue; the sync worker's is used), its app port 3000 is the admin app's;
  * redis-cli: the stack's private Redis listens on its own port and has a password
    (`requirepass`), so `-p` names that port and REDISCLI_AUTH carries the password;
  * commands of the guide's platform with no counterpart here are replaced by ours:
    `docker-compose restart worker-primary` (systemd's `clarity-worker@<queue>`; nothing to
    restart under `clarity up`), `telnet redis-host 6379` (interactive: `nc -zv` or bash's
    /dev/tcp), `node scripts/worker.js` (`clarity worker`), `npm run db:analyze`
    (`clarity db current`, see docs/troubleshooting.md#slow-database);
  * commands that run until stopped (`redis-cli --latency-history`, a worker) run for a few
    seconds.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

from app.devstack import REPO
from tests.observability.helpers import Output, clean_env, distinct_ports, free_block

# Quoted from the guide (Monitoring and Observability; Troubleshooting).
GUIDE = {
    "health checks": '''
# Worker health
curl http://localhost:3001/health

# Detailed status
curl http://localhost:3001/status

# Prometheus metrics
curl http://localhost:3001/metrics
''',
    "admin dashboard": '''
# Queue overview
curl -H "Authorization: Bearer ${ADMIN_API_KEY}" \\
     http://localhost:3000/api/admin/queue

# Failed jobs
curl -H "Authorization: Bearer ${ADMIN_API_KEY}" \\
     "http://localhost:3000/api/admin/queue?action=failed-jobs&queue=sync"

# Retry failed jobs
curl -X POST -H "Authorization: Bearer ${ADMIN_API_KEY}" \\
     -H "Content-Type: application/json" \\
     -d '{"action":"retry-failed","queueName":"sync"}' \\
     http://localhost:3000/api/admin/queue
''',
    "high memory usage": '''
# Check Redis memory
redis-cli info memory
''',
    "jobs stuck in waiting": '''
# Check worker status
curl http://localhost:3001/health

# Restart workers
docker-compose restart worker-primary

# Clear stuck jobs
curl -X POST -H "Authorization: Bearer ${ADMIN_API_KEY}" \\
     -d '{"action":"clear-queue","queueName":"sync","jobState":"waiting"}' \\
     http://localhost:3000/api/admin/queue
''',
    "connection issues": '''
# Test Redis connection
redis-cli -h localhost -p 6379 ping

# Check network connectivity
telnet redis-host 6379

# Verify credentials
redis-cli -h localhost -p 6379 -a password ping
''',
    "debug mode": '''
export DEBUG=bullmq:*
export LOG_LEVEL=debug
node scripts/worker.js
''',
    "performance issues": '''
# Check slow Redis operations
redis-cli --latency-history -i 1

# Monitor worker performance
curl http://localhost:3001/metrics | grep worker_

# Database query performance
npm run db:analyze
''',
}


def adapt(block: str, ports: dict) -> str:
    """The guide's block as it runs against this stack (see the module docstring)."""
    text = block.replace("localhost:3001", f"localhost:{ports['health']}")
    text = text.replace("localhost:3000", f"localhost:{ports['admin']}")
    text = text.replace("-p 6379", f"-p {ports['redis']}")
    text = re.sub(r"^redis-cli (info|--latency)", rf"redis-cli -p {ports['redis']} \1", text,
                  flags=re.MULTILINE)
    text = text.replace("-a password", '-a "$REDIS_PASSWORD" --no-auth-warning')
    # Runs until Ctrl-C: three seconds, line-buffered (a pipe would buffer it all away).
    text = text.replace(f"redis-cli -p {ports['redis']} --latency-history -i 1",
                        f"stdbuf -oL timeout 3 redis-cli -p {ports['redis']} --latency-history "
                        "-i 1 || true")
    text = text.replace("docker-compose restart worker-primary",
                        "echo 'under systemd: systemctl restart clarity-worker@sync'")
    text = text.replace("telnet redis-host 6379",
                        f"(exec 3<>/dev/tcp/localhost/{ports['redis']}) && echo connected")
    text = text.replace("node scripts/worker.js",
                        "timeout -s INT 6 clarity worker --queue sync --name guide-debug "
                        "--no-periodic || true")
    text = text.replace("npm run db:analyze", "clarity db current")
    return text


def run_block(block: str, env: dict) -> str:
    result = subprocess.run(["bash", "-ec", block], env=env, capture_output=True, text=True,
                            timeout=120, check=False, cwd=REPO)
    assert result.returncode == 0, f"{block}\n--- stdout\n{result.stdout}\n--- stderr\n" \
                                   f"{result.stderr}"
    return result.stdout + result.stderr


def test_the_guides_monitoring_and_troubleshooting_commands_against_clarity_up(tmp_path):
    redis_port, admin_port = distinct_ports(2)
    health = free_block()
    state = tmp_path / "state"
    stack_env = clean_env(TASK_MODULES="tests.jobs", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "up", "--no-live", "--no-demo", "--interval", "5",
         "--redis-port", str(redis_port), "--admin-port", str(admin_port),
         "--health-port-base", str(health), "--state-dir", str(state)],
        cwd=REPO, env=stack_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(proc.stdout)
    try:
        out.wait_for("Clarity is up", timeout=120)
        secrets = dict(line.split("=", 1) for line in (state / "dev-secrets.env").read_text()
                       .splitlines() if "=" in line and not line.startswith("#"))
        env = {**stack_env, "ADMIN_API_KEY": secrets["ADMIN_API_KEY"],
               "REDISCLI_AUTH": secrets["REDIS_PASSWORD"],
               "REDIS_PASSWORD": secrets["REDIS_PASSWORD"],
               "CLARITY_ENV_FILE": str(state / "dev-secrets.env"),
               "PATH": f"{sys.executable.rsplit('/', 1)[0]}:{stack_env['PATH']}"}
        ports = {"health": health, "admin": admin_port, "redis": redis_port}
        # Something to retry and something waiting to clear: a job that fails for good,
        # and jobs on a paused queue.
        run_block("clarity enqueue sync permanent '{}' --wait 20 || true", env)
        run_block("clarity queue pause sync && for i in 1 2 3; do "
                  "clarity enqueue sync record \"{\\\"n\\\": $i}\" >/dev/null; done", env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the admin app answers
            if run_block(f"curl -s -o /dev/null -w '%{{http_code}}' "
                         f"http://localhost:{admin_port}/login || true", env) == "200":
                break
            time.sleep(0.5)

        said = {name: run_block(adapt(block, ports), env) for name, block in GUIDE.items()}

        health_out = said["health checks"]
        assert '"status": "ok"' in health_out or '"status":"ok"' in health_out
        assert '"queues"' in health_out and "clarity_worker_up 1.0" in health_out
        admin = said["admin dashboard"]
        assert '"queues":[' in admin.replace(" ", "")  # the overview
        assert '"state":"failed"' in admin.replace(" ", "")  # the failed permanent job
        assert re.search(r'"action":\s*"retry-failed".*"count":\s*1', admin, re.DOTALL), admin
        assert "used_memory:" in said["high memory usage"]
        stuck = said["jobs stuck in waiting"].replace(" ", "")
        # Three waiting on the paused queue, and the failed job the guide retried above; one
        # more when the run crosses a tenth minute of the wall clock (the stack's periodic
        # enqueue_stale_syncs lands in `sync`, paused or not).
        cleared = re.search(r'"action":"clear-queue".*?"count":(\d+)', stuck)
        assert cleared and int(cleared.group(1)) in (4, 5), stuck
        connection = said["connection issues"]
        assert connection.count("PONG") == 2 and "connected" in connection
        debug = said["debug mode"]
        assert '"level": "debug"' in debug, debug  # debug lines were logged (JSON: no tty)
        performance = said["performance issues"]
        assert "seconds range" in performance  # redis-cli's latency history (raw format)
        assert "clarity_worker_up" in performance and "clarity_worker_active_jobs" in \
            performance
        assert "up to date" in performance  # clarity db current
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
