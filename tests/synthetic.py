"""Reports with known values, built in code, for compare and plot tests (no run needed)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def make_report(
    policy: str = "compact",
    repeat_s: list[float] | None = None,
    *,
    workers: int = 2,
    usable: list[int] | None = None,
    hostname: str = "node1",
    cpu_model: str = "Test CPU 9000",
    size: int = 20_000_000,
    dtype: str = "float32",
    kernel: str = "sum",
    status: str = "ok",
    total_s: float = 1.0,
    load_s: float = 0.2,
    threads_per_worker: int = 1,
    start_method: str = "forkserver",
    name: str = "synthetic",
    observed: list[list[int]] | None = None,
    ceiling_gbps: float | None = None,
    version: Any = 1,
) -> dict[str, Any]:
    """A version-1 report with the fields compare and plot read, and exactly these timings."""
    repeat_s = list(repeat_s if repeat_s is not None else [0.010, 0.011, 0.012, 0.011, 0.010])
    usable = usable if usable is not None else list(range(max(4, workers)))
    itemsize = 4 if dtype == "float32" else 8
    nbytes = size * itemsize
    pinned = policy != "none"
    requested = [[usable[i % len(usable)]] for i in range(workers)] if pinned else [list(usable)] * workers
    observed = observed if observed is not None else [list(c) for c in requested]
    gbps = [nbytes / s / 1e9 for s in repeat_s]
    rows_per = size // workers
    ws = []
    for i in range(workers):
        rows = [i * rows_per, size if i == workers - 1 else (i + 1) * rows_per]
        mid = (rows[0] + rows[1]) // 2
        share = [s * 0.9 for s in repeat_s]
        ws.append(
            {
                "rank": i,
                "pid": 1000 + i,
                "cpus_requested": requested[i],
                "cpus_observed": observed[i],
                "cpus_ran_on": [observed[i][0]] if pinned else sorted({usable[0], usable[-1]}),
                "pinned_ok": observed[i] == requested[i],
                "node": 0,
                "rows": rows,
                "chunks": [[rows[0], mid], [mid, rows[1]]],
                "repeat_s": share,
                "chunk_s": [[s * 0.4, s * 0.5] for s in repeat_s],
            }
        )
    bandwidth: dict[str, Any] = {
        "bytes_per_repeat": nbytes,
        "gbps_per_repeat": gbps,
        "gbps": {"median": statistics.median(gbps), "max": max(gbps)},
    }
    if ceiling_gbps is not None:
        bandwidth["ceiling_gbps"] = ceiling_gbps
    return {
        "version": version,
        "status": status,
        "error": None if status == "ok" else "worker 1 died",
        "exit_code": 0 if status == "ok" else 1,
        "started_at": "20260101T000000Z",
        "job": {
            "name": name,
            "kernel": kernel,
            "workers": workers,
            "threads_per_worker": threads_per_worker,
            "pinning": policy,
            "start_method": start_method,
            "numa": {"partition": True},
            "chunks_per_worker": 2,
            "accumulate": "float64",
            "repeats": len(repeat_s),
            "warmup": 1,
        },
        "host": {
            "hostname": hostname,
            "cpu_model": cpu_model,
            "kernel": "6.1.0",
            "python": "3.11.7",
            "numpy": "2.0.0",
            "shmhpc": "0.1.0",
            "env": {},
        },
        "data": {
            "source": "generate",
            "distribution": "normal",
            "seed": 0,
            "path": None,
            "shape": [size],
            "dtype": dtype,
            "nbytes": nbytes,
        },
        "plan": {
            "policy": policy,
            "pinned": pinned,
            "usable_cpus": usable,
            "workers": [{"rank": i, "cpus": requested[i], "node": 0} for i in range(workers)],
        },
        "workers": ws,
        "pages": {"partitions": [{"node": 0, "start": 0, "stop": size, "fraction_on_node": 1.0}]},
        "timings": {
            "pool_start_s": 0.3,
            "load_s": load_s,
            "repeat_s": repeat_s,
            "repeat": {"median": statistics.median(repeat_s)},
            "total_s": total_s,
        },
        "bandwidth": bandwidth,
        "warnings": [],
    }


def write(path: Path, report: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    return path
