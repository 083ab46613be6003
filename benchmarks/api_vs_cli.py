"""Does the Python API add a per-call cost? Its warm ``reduce`` against the same CLI job's warm repeats.

Run on demand (not part of the test suite)::

    python benchmarks/api_vs_cli.py                  # 80 MB float32, 2 workers, 8 pairs of 20 repeats
    python benchmarks/api_vs_cli.py --elements 500_000_000 --workers 16 --pairs 5

The same job twice: ``python -m shmhpc run`` (a subprocess: its own pool, repeats after one warmup) and
``Session.reduce(a, "sum", accumulate="native", repeats=R)`` on one session kept open (its pool warm).
The two alternate, CLI then API, ``--pairs`` times (memory bandwidth drifts on shared machines: only
neighbours compare); each pair gives the ratio of median repeat times, API over CLI, and the median of
those ratios is the answer (1.00 = no cost; the target is within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import shmhpc

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elements", type=lambda s: int(s.replace("_", "")), default=20_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="api-vs-cli-"))
    spec = tmp / "job.yaml"
    spec.write_text(
        f"name: cli\ndata: {{source: generate, size: {args.elements}, dtype: float32, seed: 0}}\n"
        f"workers: {args.workers}\npinning: compact\naccumulate: native\nrepeats: {args.repeats}\nwarmup: 1\n"
        f"verify: false\nreport: {tmp}/cli.json\n"
    )
    x = np.random.default_rng(0).standard_normal(args.elements, dtype=np.float32)
    pairs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with shmhpc.Session(workers=args.workers, pinning="compact", verify=False) as s:
        a = s.share(x)
        s.reduce(a, "sum", accumulate="native", repeats=1, warmup=1)  # the kernel set, the pool warm
        for _ in range(args.pairs):
            out = subprocess.run(
                [sys.executable, "-m", "shmhpc", "run", str(spec), "--force", "-q"], env=env, capture_output=True
            )
            if out.returncode != 0:
                print(out.stdout.decode() + out.stderr.decode(), file=sys.stderr)
                return 1
            cli = statistics.median(json.loads((tmp / "cli.json").read_text())["timings"]["repeat_s"])
            r = s.reduce(a, "sum", accumulate="native", repeats=args.repeats, warmup=1)
            api = statistics.median(r.timings["repeat_s"])
            pairs.append({"cli_median_s": cli, "api_median_s": api, "ratio_api_over_cli": api / cli})
    ratios = [p["ratio_api_over_cli"] for p in pairs]
    med = statistics.median(ratios)
    print(f"{args.elements:,} float32 ({args.elements * 4 / 1e6:,.0f} MB), {args.workers} workers, "
          f"{args.repeats} repeats per run, {args.pairs} CLI/API pairs")  # fmt: skip
    for i, p in enumerate(pairs, 1):
        print(f"  pair {i}: CLI {p['cli_median_s'] * 1e3:7.2f} ms   API {p['api_median_s'] * 1e3:7.2f} ms   "
              f"API/CLI {p['ratio_api_over_cli']:.3f}")  # fmt: skip
    verdict = "within 10 %" if abs(med - 1) <= 0.10 else "NOT within 10 %"
    print(
        f"median API/CLI ratio of warm repeat medians: {med:.3f} ({verdict}); range {min(ratios):.3f}-{max(ratios):.3f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "pairs": pairs, "median_ratio": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
