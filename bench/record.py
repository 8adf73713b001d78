"""One JSON file per bench run: every figure, the machine's load, the commit.

    bench/results/<bench>-<UTC time>-<commit>.json   (git-ignored; kept runs are quoted in
                                                     docs/benchmarks.md)

`python -m bench.compare OLD.json NEW.json` reads two of them."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=RESULTS.parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


_begun: dict = {}


def begin() -> None:
    """Note when the run starts and the machine's load then: a bench calls it first thing,
    and save() reports both beside the end's (the load at the start says whether the
    machine was quiet; at the end it is partly the bench's own)."""
    _begun.update(at=dt.datetime.now(dt.UTC), load=_load())


def machine() -> dict:
    return {"load": _load(), "load_at_start": _begun.get("load"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "host": platform.node()}


def save(bench: str, figures: dict, path: Path | None = None) -> Path:
    """Write the run; `figures` is the bench's own dict of results (nested is fine). Its
    start is what begin() noted (the end, for a bench that never called it)."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    finished = dt.datetime.now(dt.UTC)
    doc = {"bench": bench, "commit": commit, "dirty": dirty,
           "started": _begun.get("at", finished).isoformat(timespec="seconds"),
           "finished": finished.isoformat(timespec="seconds"), "machine": machine(),
           "figures": figures}
    if path is None:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{bench}-{finished:%Y%m%dT%H%M%SZ}-{commit}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")
    return path
