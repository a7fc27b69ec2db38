"""How fast the `edgeveil` command starts: `edgeveil --help` and `edgeveil node --help`,
beside `python -c pass` measured in the same run (the interpreter's own start-up on this
machine). Target: under 0.5 s, so that a technician's commands feel immediate.

    .venv/bin/python benchmarks/bench_cli.py [--runs N]

Each command runs N times as a fresh process; the median wall time is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.5

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "edgeveil --help": [sys.executable, "-m", "gateway.cli", "--help"],
    "edgeveil node --help": [sys.executable, "-m", "gateway.cli", "node", "--help"],
    "edgeveil node deploy --help": [sys.executable, "-m", "gateway.cli", "node", "deploy", "-h"],
}


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)  # noqa: S603
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (default 15)")
    args = parser.parse_args()
    median_seconds(COMMANDS["edgeveil --help"], 2)  # warm the file cache and .pyc files
    print(f"start-up time, median of {args.runs} runs (target < {TARGET_S} s)")
    for name, command in COMMANDS.items():
        seconds = median_seconds(command, args.runs)
        verdict = "" if name.startswith("python") else (
            "  ok" if seconds < TARGET_S else "  OVER TARGET"
        )  # fmt: skip
        print(f"  {name:<30} {seconds * 1000:7.1f} ms{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
