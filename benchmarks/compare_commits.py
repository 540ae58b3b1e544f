"""Before/after: the same workloads (W1-W5 of impl_ours.py) on another commit and on the working tree, side by side.

Usage::

    python benchmarks/compare_commits.py --base origin/main            # W1, W2, W3 on both backends
    python benchmarks/compare_commits.py --base HEAD~3 --only w1,w4 --reps 9

The base commit's ``miniagents/`` is extracted with ``git archive`` into a temporary folder; every repetition
runs in its own subprocess, alternating base and working tree, so both see the same machine load.  The
workload code is the working tree's ``impl_ours.py`` for both: only the library differs.  Prints the median
CPU time of each side and the ratio working tree / base (> 1: the working tree is slower).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "BENCH_RESULT "
SIZES = {"w1": 20_000, "w2": 200_000, "w3": 20_000, "w4": 500_000, "w4r": 200_000, "w5": 200_000}


def extract(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "miniagents"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")


def run(library: Path, workload: str, size: int, backend: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(library), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, str(HERE / "impl_ours.py"), "--workload", workload, "--size", str(size)]
    command += ["--backend", backend, "--warmup", "1", "--reps", "1"]
    if workload == "w5":
        command += ["--consumers", "4"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=600).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith(MARKER))[len(MARKER) :])
    expected = str(library / "miniagents" / "__init__.py")
    if result["miniagents_file"] != expected:
        raise RuntimeError(f"imported {result['miniagents_file']}, expected {expected}")
    return float(result["times"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--only", default="w1,w2,w3", help="comma-separated workloads of impl_ours.py")
    parser.add_argument("--backends", default="trio,asyncio")
    parser.add_argument("--reps", type=int, default=7, help="subprocesses per side, workload and backend")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the default sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        extract(args.base, base)
        print(f"base: {args.base}; working tree: {ROOT}; {args.reps} runs per side, medians of CPU time")
        print(f"{'workload':10} {'backend':8} {'base s':>9} {'tree s':>9} {'tree/base':>9}")
        for workload in args.only.split(","):
            size = max(1, int(SIZES[workload] * args.scale))
            for backend in args.backends.split(","):
                times: dict[str, list[float]] = {"base": [], "tree": []}
                for _ in range(args.reps):
                    times["base"].append(run(base, workload, size, backend))
                    times["tree"].append(run(ROOT, workload, size, backend))
                b, t = statistics.median(times["base"]), statistics.median(times["tree"])
                print(f"{workload:10} {backend:8} {b:9.3f} {t:9.3f} {t / b:9.2f}", flush=True)


if __name__ == "__main__":
    main()
