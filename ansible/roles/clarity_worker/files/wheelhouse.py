#!/usr/bin/env python3
"""Build (or reuse) the wheelhouse for Clarity hosts and pack it once per content.

Runs on the controller. Prints JSON: {"digest", "tarball", "version"}.

The digest is taken from each wheel's name and its RECORD (the sha256 of every file in
it), not from the wheel's bytes: rebuilding an unchanged project gives a new zip (new
timestamps) but the same digest, so a second playbook run changes nothing on the hosts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def wheel_fingerprint(path: Path) -> bytes:
    with zipfile.ZipFile(path) as wheel:
        record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
        return path.name.encode() + b"\0" + wheel.read(record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--project", required=True, help="the repository to build")
    parser.add_argument("--wheelhouse", default="", help="reuse these wheels (no build)")
    parser.add_argument("--out", required=True, help="where builds and tarballs go")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.wheelhouse:
        wheels_dir = Path(args.wheelhouse)
    else:
        wheels_dir = out / "wheels"
        for stale in wheels_dir.glob("clarity_jobs-*.whl"):
            stale.unlink()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--wheel-dir",
                str(wheels_dir),
                args.project,
            ],
            check=True,
        )
    wheels = sorted(wheels_dir.glob("*.whl"))
    clarity = [w for w in wheels if w.name.startswith("clarity_jobs-")]
    if len(clarity) != 1:
        sys.exit(f"expected one clarity_jobs wheel in {wheels_dir}, found {len(clarity)}")

    digest = hashlib.sha256(b"\n".join(wheel_fingerprint(w) for w in wheels)).hexdigest()[:16]
    tarball = out / f"clarity-wheelhouse-{digest}.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for wheel in wheels:
                tar.add(wheel, arcname=wheel.name)
        partial.rename(tarball)
    version = clarity[0].name.split("-")[1]
    print(json.dumps({"digest": digest, "tarball": str(tarball), "version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
