"""Benchmark of warm-started stage processes (ganpipe/warmstart.py) against cold ones, side by side.

On the test suite's tiny project (tests/conftest.py: 16 px digits, a 0.256-kimg training), each stage
command `ganpipe prepare | ref-stats | train | evaluate | register` is run as a subprocess, cold
(GANPIPE_WARM_START=0) and warm (a warm server started first, as `ganpipe run` does), alternating which
goes first, for --rounds rounds. Reported per stage: median wall seconds of each and the median of the
per-round ratios cold/warm; also the warm server's start (until it answers its first command) and the
cold processes' exit without the module teardown (`exit_now`) against a plain interpreter exit. The `dvc`
commands a run makes (`dvc status --json`, `dvc plots show`, `dvc repro --single-item train` with nothing to
do) are timed the same way, cold (`python -m dvc`) and warm (`ganpipe.core.dvc.dvc_command`).

    .venv/bin/python bench/warm_start.py [--rounds 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganpipe.core.dvc import dvc_command  # noqa: E402
from ganpipe.warmstart import SOCKET_ENV, SWITCH_ENV, warm_server  # noqa: E402
from tests.conftest import make_project, tiny_params_dict  # noqa: E402

STAGES = ["prepare", "ref-stats", "train", "evaluate", "register"]


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def cold_vs_warm(t: dict[str, list[float]]) -> dict:
    """Medians of the cold and warm seconds, and the median of the per-round ratios."""
    return {
        "cold_s": round(statistics.median(t["cold"]), 2),
        "warm_s": round(statistics.median(t["warm"]), 2),
        "ratio": round(statistics.median(c / w for c, w in zip(t["cold"], t["warm"], strict=True)), 2),
        "all": t,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ganpipe-bench-warm-"))
    base = {
        **os.environ,
        "GANPIPE_CACHE_DIR": str(work / "cache"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    base.pop(SOCKET_ENV, None)
    os.environ.update(base)
    root = make_project(work / "project", tiny_params_dict())
    cold_env = {**base, SWITCH_ENV: "0"}
    # outputs in place, dvc.lock written, MLflow's store created: every later command finds what it needs
    timed([sys.executable, "-m", "dvc", "repro"], root, cold_env)
    times = {s: {"cold": [], "warm": []} for s in STAGES}
    dvc_runs = {
        "status": ["status", "--json"],
        "plots show": ["plots", "show", "-o", str(work / "plots")],
        "repro (nothing to do)": ["repro", "--single-item", "train"],
    }
    dvc_times = {k: {"cold": [], "warm": []} for k in dvc_runs}
    t0 = time.perf_counter()
    with warm_server() as path:
        warm_env = {**base, SOCKET_ENV: path}
        timed(dvc_command(["status"], warm_env), root, warm_env)  # waits for the server's imports
        server_start = time.perf_counter() - t0
        for r in range(args.rounds):  # before the stages below change the outputs dvc.lock records
            for name, dvc_args in dvc_runs.items():
                for mode in ("cold", "warm") if r % 2 == 0 else ("warm", "cold"):
                    env = cold_env if mode == "cold" else warm_env
                    dvc_times[name][mode].append(timed(dvc_command(dvc_args, env), root, env))
        for r in range(args.rounds):
            for stage in STAGES:
                order = ("cold", "warm") if r % 2 == 0 else ("warm", "cold")
                for mode in order:
                    env = cold_env if mode == "cold" else warm_env
                    times[stage][mode].append(timed(["ganpipe", stage], root, env))
    exits = {"plain": [], "exit_now": []}
    imports = "import torch, torch._dynamo, mlflow"
    for _ in range(args.rounds):
        for mode, tail in (("plain", ""), ("exit_now", "; from ganpipe.core.processes import exit_now; exit_now(0)")):
            exits[mode].append(timed([sys.executable, "-c", imports + tail], root, cold_env))
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "rounds": args.rounds,
        "server_start_s": round(server_start, 2),
        "stages": {s: cold_vs_warm(t) for s, t in times.items()},
        "import_torch_mlflow_then_exit_s": {k: round(statistics.median(v), 2) for k, v in exits.items()},
        "dvc": {name: cold_vs_warm(t) for name, t in dvc_times.items()},
    }
    total_cold = sum(v["cold_s"] for v in result["stages"].values())
    total_warm = sum(v["warm_s"] for v in result["stages"].values())
    result["five_stages_s"] = {"cold": round(total_cold, 2), "warm": round(total_warm, 2)}
    out = Path(args.out) / f"warm_start-cpu-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for s, v in result["stages"].items():
        print(f"{s:10s} cold {v['cold_s']:6.2f} s  warm {v['warm_s']:6.2f} s  ratio {v['ratio']:.2f}x")
    print(f"five stages: cold {total_cold:.1f} s, warm {total_warm:.1f} s; server start {server_start:.1f} s")
    print(f"import torch+mlflow, then exit: {result['import_torch_mlflow_then_exit_s']}")
    for name, v in result["dvc"].items():
        print(f"dvc {name:22s} cold {v['cold_s']:5.2f} s  warm {v['warm_s']:5.2f} s  ratio {v['ratio']:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
