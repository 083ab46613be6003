"""``shmhpc bench``: this machine's memory bandwidth ceiling, measured the STREAM way in shmhpc's own pool.

Three float64 arrays a, b, c live in one shared segment; each pinned worker owns the same page-aligned
slice of all three and first-touches it (so on a NUMA machine every slice sits on its worker's node).
Per iteration every worker runs read (``a·a``: BLAS ddot of a with itself, one load stream, faster per core
than ``np.sum``), copy (``c = a``), scale (``b = q·c``), add
(``c = a + b``) and triad (``a = b + q·c``, blocked so the product stays in cache) on its slice; a round
is timed in the launcher from the broadcast to the last answer, like STREAM's OpenMP fork and join.

Counting follows STREAM 5.10 (https://www.cs.virginia.edu/stream/ref.html): bytes per element 8 for read,
16 for copy and scale, 24 for add and triad — explicit loads and stores only; GB = 10⁹ bytes; the first
iteration is discarded and the *best* rate (minimum time) is reported beside the median and the spread.
With write-allocate (a store first reads its cache line: +8 bytes per stored element) is given separately,
labelled, as likwid-bench users and some STREAM users count it. The arrays are at least 4× the last-level
cache, and their final values are checked against STREAM's scalar recurrence.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
from pathlib import Path
from typing import Any

from .errors import RunError, SpecError
from .pool import STREAM_SCALAR
from .report import host_info, now_stamp

__all__ = ["KERNELS", "parse_size", "run_bench", "ceiling_path", "load_ceiling", "ceiling_for", "format_bench"]

BENCH_VERSION = 1
# kernel -> (bytes per element as STREAM counts them, stores per element)
KERNELS: dict[str, tuple[int, int]] = {
    "read": (8, 0),
    "copy": (16, 1),
    "scale": (16, 1),
    "add": (24, 1),
    "triad": (24, 1),
}
MIN_ARRAY_BYTES = 64 << 20
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE]\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str = "--size") -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``1e8`` (bytes; K/M/G/T are powers of 1024) → bytes."""
    m = _SIZE_RE.match(str(text))
    if not m or len(str(text)) > 40:
        raise SpecError(f"{what}: {str(text)[:40]!r} is not a size; allowed: bytes, or a number with K, M, G or T")
    unit = (m.group(2) or "B").upper()[0]
    n = float(m.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    if not 4096 <= n <= 1 << 50:
        raise SpecError(f"{what}: {text!r} is out of range; allowed: 4K to 1024T per array")
    return int(n)


def default_array_bytes(llc_bytes: int | None) -> int:
    """STREAM's rule: each array at least 4× the last-level cache (and at least 64 MiB)."""
    return max(MIN_ARRAY_BYTES, 4 * (llc_bytes or 0))


def _expected(iterations: int) -> tuple[float, float, float]:
    """a, b, c after ``iterations`` rounds of copy, scale, add, triad from a=1, b=2, c=0 (STREAM's check)."""
    a, b, c = 1.0, 2.0, 0.0
    for _ in range(iterations):
        c = a
        b = STREAM_SCALAR * c
        c = a + b
        a = b + STREAM_SCALAR * c
    return a, b, c


def _stats(n_elements: int, kernel: str, seconds: list[float]) -> dict[str, Any]:
    per_elem, stores = KERNELS[kernel]
    nbytes, wa_bytes = per_elem * n_elements, (per_elem + 8 * stores) * n_elements
    timed = seconds[1:] or seconds  # the first iteration is discarded (STREAM)
    best = min(timed)
    return {
        "bytes": nbytes,
        "bytes_write_allocate": wa_bytes,
        "best_gbps": nbytes / best / 1e9,
        "best_gbps_write_allocate": wa_bytes / best / 1e9,
        "median_gbps": nbytes / statistics.median(timed) / 1e9,
        "min_s": best,
        "avg_s": statistics.fmean(timed),
        "max_s": max(timed),
        "spread": (max(timed) - best) / best,
        "seconds": seconds,
    }


def run_bench(
    topology: Any,
    *,
    array_bytes: int | None = None,
    workers: list[int] | None = None,
    pinning: str = "compact",
    iterations: int = 10,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure read/copy/scale/add/triad for each worker count; the result ``--save`` keeps."""
    from .planning import prepare
    from .session import RunSession
    from .signals import StopSignals
    from .spec import spec_from_dict

    if iterations < 2:
        raise SpecError(f"--iterations: {iterations}; allowed: 2 or more (the first is discarded)")
    size = array_bytes or default_array_bytes(topology.llc_bytes())
    n = max(512, size // 8 // 512 * 512)  # whole 4 KiB pages per array
    counts = workers or list(range(1, max(1, len(topology.usable_cores())) + 1))
    out: dict[str, Any] = {
        "kind": "shmhpc-bench",
        "version": BENCH_VERSION,
        "host": host_info(),
        "measured_at": now_stamp(),
        "method": "STREAM 5.10 counting (explicit loads and stores, GB = 1e9 B), best of the iterations after the "
        "first; write-allocate counted separately",
        "array_bytes": n * 8,
        "arrays": 3,
        "llc_bytes": topology.llc_bytes(),
        "pinning": pinning,
        "iterations": iterations,
        "runs": [],
    }
    with StopSignals() as stop:
        for w in counts:
            raw = {
                "name": "bench",
                "data": {"source": "generate", "size": 3 * n, "dtype": "float64"},
                "workers": w,
                "pinning": pinning,
                "chunks_per_worker": 1,
                "verify": False,
                "numa": {"partition": False},
            }
            prep = prepare(spec_from_dict(raw, source="bench"), topology)
            if progress is not None:
                progress(f"bench: {w} worker{'s' * (w != 1)}, 3 arrays of {n * 8 / 1e6:,.1f} MB")
            with RunSession(prep, stop=stop, stream=True) as session:
                hello = session.start()
                session.load()
                times: dict[str, list[float]] = {k: [] for k in KERNELS}
                for _ in range(iterations):
                    for k in KERNELS:
                        stop.check()
                        times[k].append(session.stream_round(k)[0])
                check = _validate(session, iterations)
            out["runs"].append(
                {
                    "workers": w,
                    "cpus": [h["cpus_observed"] for h in hello],
                    "kernels": {k: _stats(n, k, v) for k, v in times.items()},
                    "validated": check,
                }
            )
    return out


def _validate(session: Any, iterations: int) -> str:
    """Every 997th element of a, b, c against STREAM's recurrence; raises when one is off."""
    want = _expected(iterations)
    with session.array() as arr:
        n = arr.size // 3
        for name, k, value in zip("abc", range(3), want):
            got = arr[k * n : (k + 1) * n : 997]
            bad = abs(got - value) > 1e-13 * abs(value)
            if bad.any():
                raise RunError(f"bench: array {name} holds {got[bad][0]!r}, expected {value!r}: results are wrong")
    return f"a, b, c sampled every 997 elements equal STREAM's recurrence after {iterations} iterations"


# -- kept per host ---------------------------------------------------------------------------------


def ceiling_path(host: str | None = None) -> Path:
    """``$SHMHPC_CEILING_DIR`` or ``$XDG_CACHE_HOME/shmhpc`` (default ``~/.cache/shmhpc``) / ``ceiling-HOST.json``."""
    base = os.environ.get("SHMHPC_CEILING_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "shmhpc"
    )
    name = re.sub(r"[^A-Za-z0-9._-]", "_", host or socket.gethostname())
    return Path(base) / f"ceiling-{name}.json"


def load_ceiling(path: Path | None = None) -> dict[str, Any] | None:
    """This host's saved bench, or None (missing, unreadable, another version or another host)."""
    p = path or ceiling_path()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "shmhpc-bench" or data.get("version") != BENCH_VERSION:
        return None
    if (data.get("host") or {}).get("hostname") != socket.gethostname():
        return None
    return data


def ceiling_for(workers: int, bench: dict[str, Any] | None) -> dict[str, Any] | None:
    """The read ceiling for ``workers`` (that count, else the largest measured below it), with where it came from."""
    if not bench:
        return None
    runs = [r for r in bench.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("workers"), int)]
    fit = [r for r in runs if r["workers"] <= workers]
    if not fit:
        return None
    run = max(fit, key=lambda r: r["workers"])
    try:
        gbps = float(run["kernels"]["read"]["best_gbps"])
    except (KeyError, TypeError, ValueError):
        return None
    return {
        "gbps": gbps,
        "kernel": "read",
        "workers": run["workers"],
        "measured_at": bench.get("measured_at"),
        "array_bytes": bench.get("array_bytes"),
    }


def format_bench(result: dict[str, Any]) -> str:
    """A table per worker count: best, median and spread per kernel, and the write-allocate figure."""
    from .tables import text_table

    lines = [
        f"bench on {result['host']['hostname']}: 3 float64 arrays of {result['array_bytes'] / 1e6:,.1f} MB "
        f"(last-level cache {(result['llc_bytes'] or 0) / 1e6:,.1f} MB), pinning {result['pinning']}, "
        f"best of {result['iterations'] - 1} iterations after the first"
    ]
    rows = []
    for run in result["runs"]:
        for k, s in run["kernels"].items():
            rows.append(
                [
                    str(run["workers"]),
                    k,
                    f"{s['best_gbps']:.2f}",
                    f"{s['median_gbps']:.2f}",
                    f"{100 * s['spread']:.0f} %",
                    f"{s['best_gbps_write_allocate']:.2f}",
                ]
            )
    headers = ["workers", "kernel", "best GB/s", "median GB/s", "spread", "best GB/s incl. write-allocate"]
    lines.append(text_table(headers, rows, indent="  "))
    lines.append("  validated: " + ("yes" if all(r.get("validated") for r in result["runs"]) else "no"))
    return "\n".join(lines)
