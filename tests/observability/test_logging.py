"""Worker logs: JSON lines with the job's id and queue on every line a job writes."""

from __future__ import annotations

import json

from tests.helpers import wait_for
from worker.management import QueueManager
from worker.producer import enqueue


def _json_lines(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_json_log_lines_carry_the_job_id_queue_and_worker(env, workers, tmp_path):
    workers(extra_args=("--log-format", "json", "--name", "logtest"), health_check_port=0,
            debug=1)
    job = enqueue("sync", "permanent", {})
    wait_for(lambda: (QueueManager().get_job("sync", job.id) or {}).get("state") == "failed",
             message="job failed")
    log = tmp_path / "worker-0.log"
    lines = wait_for(lambda: [d for d in _json_lines(log) if "failed for good" in d["msg"]],
                     message="failure logged")
    line = lines[0]
    assert line["job_id"] == job.id
    assert line["queue"] == "sync"
    assert line["task"] == "permanent"
    assert line["worker"] == "logtest"
    assert line["level"] == "error" and line["ts"].endswith("Z")
    # DEBUG=1 lowers the level whatever LOG_LEVEL says.
    assert any(d["level"] == "debug" for d in _json_lines(log))
    # Lines outside a job carry no job fields.
    started = next(d for d in _json_lines(log) if "started" in d["msg"])
    assert "job_id" not in started
