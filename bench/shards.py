#!/usr/bin/env python3
"""N workers (`chatlake run --shard K/N`) against one worker on the LINE WORKS reference job, all
writing one Delta table on a SeaweedFS that this script starts on loopback (as `run.py --s3`).

    python3 bench/shards.py --bin target/release/chatlake [--rows 5000000] [--workers 4] [--rounds 3]

Per round: one worker, then N workers started together (the order alternating between rounds),
each run with a fresh state directory and a fresh table prefix; the wall time runs from the first
spawn to the last exit. Prints every run and the medians. Exit 1 if any worker fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the harness: input generation, venv, SeaweedFS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the chatlake binary")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/chatlake-bench")
    a = ap.parse_args()
    work = Path(a.work)
    bench = run.bench_dir()
    inp, _ = run.generate(bench, work, "lineworks", a.rows, 42)
    py = run.venv_python(bench, work / "venv", False)
    s3 = run.SeaweedFs(py, work)
    pipeline = run.REPO / "pipelines" / "bench_lineworks.toml"
    times: dict[int, list[float]] = {1: [], a.workers: []}
    n, ok = 0, True
    try:
        for r in range(a.rounds):
            for workers in (1, a.workers) if r % 2 == 0 else (a.workers, 1):
                n += 1
                state = Path(tempfile.mkdtemp(prefix="chatlake-shards-"))
                env = dict(os.environ, NO_COLOR="1", CHATLAKE__SINKS__LAKE__TYPE="delta",
                           BENCH_INPUT=str(inp), BENCH_STATE=str(state),
                           BENCH_OUTPUT=f"s3://bench/shards/run-{n}", **s3.env())
                os.sync()
                start = time.monotonic()
                procs = [subprocess.Popen(
                    [a.bin, "run", str(pipeline)] + (["--shard", f"{k}/{workers}"] if workers > 1 else []),
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(workers)]
                codes = [p.wait() for p in procs]
                wall = time.monotonic() - start
                shutil.rmtree(state, ignore_errors=True)
                if any(codes):
                    print(f"run {n}: {workers} worker(s) FAILED: exit codes {codes}")
                    ok = False
                    continue
                times[workers].append(wall)
                print(f"run {n}: {workers} worker(s) {wall:.2f} s", flush=True)
    finally:
        s3.stop()
    for workers, walls in times.items():
        if walls:
            print(f"{workers} worker(s): median {statistics.median(walls):.2f} s "
                  f"({min(walls):.2f}-{max(walls):.2f}) over {len(walls)} runs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
