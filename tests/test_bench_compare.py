"""The bench regression guard: a figure more than 15 % worse is flagged, in its direction."""

from __future__ import annotations

import json

from bench import compare


def run(figures: dict, tmp_path, name: str):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"bench": "queue", "commit": name, "figures": figures,
                                "machine": {"load": [0.1, 0.1, 0.1]}}))
    return path


def test_worse_rates_and_slower_latencies_are_flagged_better_ones_are_not(tmp_path, capsys):
    old = run({"clarity_enqueue_per_s": 1000, "clarity_latency": {"p99_ms": 1.0},
               "waitingBytesPerJob": 400, "jobs": 20000}, tmp_path, "old")
    better = run({"clarity_enqueue_per_s": 1100, "clarity_latency": {"p99_ms": 0.9},
                  "waitingBytesPerJob": 390, "jobs": 20000}, tmp_path, "better")
    worse = run({"clarity_enqueue_per_s": 800, "clarity_latency": {"p99_ms": 1.2},
                 "waitingBytesPerJob": 401, "jobs": 10}, tmp_path, "worse")
    assert compare.main([str(old), str(better)]) == 0
    assert compare.main([str(old), str(worse)]) == 1
    out = capsys.readouterr().out
    flagged = [line.split()[0] for line in out.splitlines() if line.endswith("WORSE")]
    assert flagged == ["clarity_enqueue_per_s", "clarity_latency.p99_ms"]  # not the 0.25 %


def test_a_run_records_when_it_started_and_the_load_then(tmp_path, monkeypatch):
    from bench import record

    loads = iter([(0.25, 0.5, 1.0), (1.75, 0.75, 1.0)])  # at the start, then at the end
    monkeypatch.setattr(record.os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(record, "_begun", {})
    record.begin()
    doc = json.loads(record.save("queue", {"x": 1}, path=tmp_path / "run.json").read_text())
    assert doc["machine"]["load_at_start"] == [0.25, 0.5, 1.0]
    assert doc["machine"]["load"] == [1.75, 0.75, 1.0]
    assert doc["started"] <= doc["finished"] and doc["figures"] == {"x": 1}
