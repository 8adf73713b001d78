"""Compare two bench runs (bench/record.py files): every figure both have, new/old, and a flag
on each that got worse by more than the threshold.

    .venv/bin/python -m bench.compare OLD.json NEW.json [--threshold 0.15]

Whether more is better is read from the figure's name: rates (`per_s`, `PerSecond`, `rps`,
`ratio`) are better higher; times, latencies, sizes and round trips better lower; anything
else is shown without a verdict. Exits 1 when a figure regressed, so a script can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HIGHER = ("per_s", "persecond", "rps", "ratio", "_per_sec", "throughput")
LOWER = ("_ms", "ms_", "seconds", "_s", "bytes", "round_trips", "per_job", "latency", "p50",
         "p95", "p99", "lost")


def flatten(doc, prefix="") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        out[prefix.rstrip(".")] = float(doc)
    return out


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when unknown."""
    lowered = name.lower()
    if any(h in lowered for h in HIGHER):
        return 1
    if any(low in lowered for low in LOWER):
        return -1
    return 0


def compare(old: dict, new: dict, threshold: float) -> tuple[list[tuple], bool]:
    a, b = flatten(old["figures"]), flatten(new["figures"])
    rows, regressed = [], False
    for name in sorted(set(a) & set(b)):
        before, after = a[name], b[name]
        ratio = after / before if before else float("inf") if after else 1.0
        sense = direction(name)
        worse = ((sense > 0 and ratio < 1 - threshold) or
                 (sense < 0 and ratio > 1 + threshold))
        regressed |= worse
        rows.append((name, before, after, ratio, sense, worse))
    return rows, regressed


def _loads(machine: dict) -> str:
    """The load average at the start (runs recorded since bench.record.begin) and the end."""
    start = machine.get("load_at_start")
    return f"{start} at the start, {machine['load']} at the end" if start else str(machine["load"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--threshold", type=float, default=0.15,
                        help="flag a figure this much worse (default 0.15 = 15%%)")
    args = parser.parse_args(argv)
    old, new = (json.loads(p.read_text()) for p in (args.old, args.new))
    for label, doc in (("old", old), ("new", new)):
        print(f"{label}: {doc['bench']} {doc['commit']} load {_loads(doc['machine'])}")
    rows, regressed = compare(old, new, args.threshold)
    width = max((len(r[0]) for r in rows), default=10)
    for name, before, after, ratio, sense, worse in rows:
        arrow = {1: "higher better", -1: "lower better", 0: ""}[sense]
        flag = "  WORSE" if worse else ""
        print(f"{name:<{width}} {before:>12.3f} {after:>12.3f} {ratio:>7.2f}x  {arrow}{flag}")
    if regressed:
        print(f"\nregressions beyond {args.threshold:.0%}: see the WORSE rows")
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
