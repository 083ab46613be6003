"""Warm-pool and cold end-to-end timings of shmhpc against a single-process ``np.sum``.

Run on demand (not part of the test suite)::

    python benchmarks/bench_sum.py              # seed case (80 MB) and a 2 GB case
    python benchmarks/bench_sum.py --big-gb 0   # seed case only
    python benchmarks/bench_sum.py --json out.json

For each case, one pinned pool is started and loaded once; then its warm rounds
and single-process ``np.sum`` calls on the *same* shared array are interleaved
(memory bandwidth drifts ±20–30 % over minutes on shared VMs, so only
interleaved numbers are compared), for ``accumulate: native`` (vs ``np.sum(a)``)
and ``accumulate: float64`` (vs ``np.sum(a, dtype=np.float64)``). Results are
medians and their ratios, all measured in this one run.
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
from pathlib import Path

import numpy as np

from shmhpc import RunSession, prepare, read_topology, spec_from_dict

ROOT = Path(__file__).resolve().parent.parent


def warm_compare(size: int, workers: int, rounds: int) -> dict:
    """Interleave warm pool rounds with single-process np.sum on one shared array."""
    out: dict = {"size": size, "nbytes": size * 4, "workers": workers, "rounds": rounds}
    topo = read_topology()
    for acc in ("native", "float64"):
        spec = spec_from_dict(
            {
                "name": "bench",
                "data": {"size": size, "dtype": "float32"},
                "workers": workers,
                "accumulate": acc,
                "chunks_per_worker": 1,
            }
        )
        prep = prepare(spec, topo)
        with RunSession(prep, start_method="forkserver") as session:
            session.start()
            t0 = time.perf_counter()
            session.load()
            out.setdefault("load_s", time.perf_counter() - t0)
            with session.array() as arr:
                dtype = None if acc == "native" else np.float64
                np.sum(arr, dtype=dtype)  # fault the parent's mapping in once
                session.round(0)
                ours, single = [], []
                for r in range(rounds):
                    wall, _ = session.round(r + 1)
                    ours.append(wall)
                    t0 = time.perf_counter()
                    np.sum(arr, dtype=dtype)
                    single.append(time.perf_counter() - t0)
        mo, ms = statistics.median(ours), statistics.median(single)
        out[acc] = {
            "shmhpc_warm_median_s": mo,
            "np_sum_median_s": ms,
            "shmhpc_gbps": size * 4 / mo / 1e9,
            "np_sum_gbps": size * 4 / ms / 1e9,
            "speedup_vs_np_sum": ms / mo,
        }
    return out


def cold_end_to_end(size: int, workers: int) -> dict:
    """`python -m shmhpc run` as a user runs it: process start, load, 5 repeats, verify, report."""
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "job.yaml"
        spec.write_text(
            f"name: cold\ndata: {{size: {size}, dtype: float32}}\nworkers: {workers}\naccumulate: native\n"
            f"repeats: 5\nreport: {d}/r.json\n"
        )
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "shmhpc", "run", str(spec), "-q"], check=True, capture_output=True)
        wall = time.perf_counter() - t0
        rep = json.loads((Path(d) / "r.json").read_text())
    t = rep["timings"]
    return {
        "process_wall_s": wall,
        "launcher_total_s": t["total_s"],
        "pool_start_s": t["pool_start_s"],
        "load_s": t["load_s"],
        "verify_s": t.get("verify_s"),
        "teardown_s": t["teardown_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-gb", type=float, default=2.0, help="size of the large case in GB (0 to skip)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    cases = {"seed-80MB": 20_000_000}
    if args.big_gb > 0:
        cases[f"{args.big_gb:g}GB"] = int(args.big_gb * 1e9 / 4)
    results = {
        "host": platform.node(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cases": {},
    }
    for name, size in cases.items():
        r = warm_compare(size, args.workers, args.rounds)
        r["cold"] = cold_end_to_end(size, args.workers)
        results["cases"][name] = r
        print(
            f"== {name}: {size:,} float32 ({size * 4 / 1e6:,.0f} MB), {args.workers} workers, "
            f"{args.rounds} interleaved rounds"
        )
        for acc, ref in (("native", "np.sum(a)"), ("float64", "np.sum(a, dtype=float64)")):
            x = r[acc]
            print(
                f"  accumulate {acc:7s}: shmhpc warm {x['shmhpc_warm_median_s'] * 1e3:8.2f} ms "
                f"({x['shmhpc_gbps']:5.1f} GB/s)"
                f"  vs {ref:26s} {x['np_sum_median_s'] * 1e3:8.2f} ms ({x['np_sum_gbps']:5.1f} GB/s)"
                f"  -> {x['speedup_vs_np_sum']:.2f}x"
            )
        c = r["cold"]
        print(
            f"  cold end-to-end: {c['process_wall_s']:.2f} s process wall (launcher {c['launcher_total_s']:.2f} s: "
            f"pool start {c['pool_start_s']:.2f}, load {c['load_s']:.2f}, verify {c['verify_s']:.2f}, "
            f"teardown {c['teardown_s']:.2f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
