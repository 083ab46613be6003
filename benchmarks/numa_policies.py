"""Warm-round bandwidth of the four ``numa.placement`` policies, measured side by side in one run.

Run on demand, on the machine you care about (not part of the test suite)::

    python benchmarks/numa_policies.py                       # 2 GB float32, one worker per core
    python benchmarks/numa_policies.py --gb 8 --workers 32 --pinning scatter --json out.json

One pinned pool per policy (``first-touch``, ``bind``, ``interleave``, ``none``) is started and
loaded, all four at once; then their warm rounds are interleaved (A B C D, B C D A, …), because memory
bandwidth drifts by tens of percent over minutes on shared machines and only interleaved numbers
compare. Prints each policy's median GB/s, its ratio to first-touch, and where its pages are (the
report's placement check: share of sampled pages where the policy meant them). On a one-node machine
every policy puts every page on node 0 and the ratios are ~1: the differences only exist where there
are several NUMA nodes. The four copies of the data must fit in memory together.

Creation order can matter more than policy on a VM: on the 2-vCPU development VM the pool created first
ran 8-12 % slower whatever its policy (reordering with ``--policies none,bind,interleave,first-touch``
moved the gap with it), so run it in two orders and trust only differences that survive both.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from contextlib import ExitStack

from shmhpc import RunSession, prepare, read_topology, spec_from_dict
from shmhpc.numa_policy import judge

POLICIES = ("first-touch", "bind", "interleave", "none")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="array size in GB (float32)")
    ap.add_argument("--workers", default="auto", help="workers per pool (default: one per usable core)")
    ap.add_argument("--pinning", default="scatter", help="pinning policy (scatter uses every node first)")
    ap.add_argument("--rounds", type=int, default=20, help="warm rounds per policy")
    ap.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="which, in the order the pools are created (run twice in two orders: see the docstring)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    topo = read_topology()
    size = int(args.gb * 1e9 / 4)
    workers = args.workers if args.workers == "auto" else int(args.workers)
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        sessions = {}
        for policy in args.policies.split(","):
            spec = spec_from_dict(
                {
                    "name": f"numa-{policy}",
                    "data": {"size": size, "dtype": "float32", "seed": 0},
                    "workers": workers,
                    "pinning": args.pinning,
                    "chunks_per_worker": 1,
                    "numa": {"placement": policy},
                }
            )
            prep = prepare(spec, topo)
            session = stack.enter_context(RunSession(prep))
            session.start()
            loads = session.load()
            placement = judge(
                prep.plan, spec.numa, topo, loads, session.numa_applied, session.numa_notes,
                [h.get("numa_policy") for h in session.hello],
            )  # fmt: skip
            session.round(0)  # warm
            sessions[policy] = session
            results[policy] = {"placement": placement["summary"], "walls_s": []}
        order = list(sessions)
        for r in range(args.rounds):
            k = r % len(order)
            for policy in order[k:] + order[:k]:  # each policy takes each place in the cycle in turn
                wall, _ = sessions[policy].round(r + 1)
                results[policy]["walls_s"].append(wall)
    base = statistics.median(results[next(iter(results))]["walls_s"])
    if "first-touch" in results:
        base = statistics.median(results["first-touch"]["walls_s"])
    nbytes = size * 4
    print(f"{platform.node()}: {len(topo.nodes)} NUMA node(s), {nbytes / 1e9:.1f} GB float32, pinning {args.pinning}, "
          f"{args.rounds} interleaved rounds per policy")  # fmt: skip
    print(f"{'policy':12} {'median GB/s':>12} {'vs first-touch':>15}  placement")
    for policy, res in results.items():
        med = statistics.median(res["walls_s"])
        res.update({"median_s": med, "gbps": nbytes / med / 1e9, "ratio_to_first_touch": base / med})
        print(f"{policy:12} {res['gbps']:12.2f} {res['ratio_to_first_touch']:14.2f}x  {res['placement']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"host": platform.node(), "nodes": len(topo.nodes), "nbytes": nbytes, "results": results}, f, indent=1
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
