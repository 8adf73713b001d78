"""The README's examples run as written (issue 18, item 9): every ```sh and ```python block
of its "Using it" section, on a fresh state directory (no database, no .env), against a
real redis-server with a real worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from app.devstack import REPO
from tests.helpers import clarity_env
from worker.producer import enqueue

VENV_BIN = Path(sys.executable).parent


def readme_blocks(section: str = "## Using it") -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", body, flags=re.DOTALL)


def test_readme_examples_run_as_written_on_a_fresh_state_dir(redis_server, prefix, env,
                                                             workers, tmp_path):
    blocks = readme_blocks()
    assert [kind for kind, _ in blocks] == ["sh", "python", "python"]
    workers(queues=("sync",))
    state = tmp_path / "fresh-state"
    job_id = enqueue("email", "ping", {"echo": "for clarity job"}, delay=3600).id
    run_env = {**os.environ, **clarity_env(redis_server, prefix), "STATE_DIR": str(state),
               "CLARITY_ENV_FILE": str(tmp_path / "absent.env"), "JOB_ID": job_id,
               "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "COLUMNS": "160"}
    run_env.pop("TASK_MODULES", None)  # as a fresh checkout: the installed handlers only
    work = tmp_path / "cwd"
    work.mkdir()
    # The producer example alone, first thing on a fresh checkout (no `clarity db upgrade`):
    # the embedded SQLite database is created and migrated on first use.
    alone = tmp_path / "producer-first"
    first = subprocess.run([sys.executable, "-c", blocks[1][1]], cwd=work, capture_output=True,
                           text=True, timeout=120, check=False,
                           env={**run_env, "STATE_DIR": str(alone)})
    assert first.returncode == 0 and "OperationalError" not in first.stderr, first.stderr
    assert (alone / "clarity.db").exists()
    outputs = []
    for kind, code in blocks:
        if kind == "sh":
            for line in code.splitlines():
                command = line.split("  #", 1)[0].strip()
                result = subprocess.run(["bash", "-c", command], env=run_env, cwd=work,
                                        capture_output=True, text=True, timeout=120,
                                        check=False)
                assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
                assert "Traceback" not in result.stderr, result.stderr
                outputs.append((command, result.stdout))
        else:
            result = subprocess.run([sys.executable, "-c", code], env=run_env, cwd=work,
                                    capture_output=True, text=True, timeout=120, check=False)
            assert result.returncode == 0, f"{code}\n{result.stderr}"
            outputs.append((code, result.stdout))
    said = dict(outputs)
    assert '"state": "completed"' in said["clarity enqueue sync ping '{\"echo\": \"hi\"}' "
                                         "--wait 10"]
    assert job_id in said['clarity job "$JOB_ID"']
    python_out = outputs[-2][1]
    assert " legacy" in python_out.splitlines()[0]  # ENABLE_QUEUE off: the legacy table
    assert (state / "clarity.db").exists()  # created and migrated on first use
