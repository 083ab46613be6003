"""The ``numba`` kernel engine: float sums accumulated in float64 at memory speed.

NumPy sums float32 pairwise in float32 (about one element per cycle, below what
two cores can stream), and with ``dtype=float64`` it casts in buffers of 8192
elements first, which halves its speed. A loop compiled by numba converts each
element to float64 in vector registers and adds it there, so a float64 sum of
float32 data costs what reading the data costs. numba is an optional extra
(``pip install 'shmhpc[fast]'``); importing it and loading the compiled loop
costs most of a second per worker, so ``engine: auto`` only picks it
for jobs that read enough data to repay that (see :func:`choose_engine`).

Error bound. The loop sums blocks of ``BLOCK`` elements, adds ``GROUP`` block
sums into a group sum and the group sums into the total. The compiler may
reorder the additions inside a block (``fastmath={"reassoc"}`` is what lets it
vectorise), but any order of adding ``m`` numbers is a binary tree of depth at
most ``m - 1``, so the depth of the whole sum is at most
``BLOCK + GROUP + ceil(n / (BLOCK * GROUP))`` float64 additions — see
:func:`sum_depth`. Only reassociation is allowed: NaN and inf propagate as in
NumPy (no ``nnan``/``ninf`` flags).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "AUTO_MIN_BYTES_PER_WORKER",
    "BLOCK",
    "GROUP",
    "choose_engine",
    "numba_installed",
    "sum_depth",
    "sum_float64",
]

# Larger blocks are faster (less work per block) and loosen the bound: with 4096 a 10M-element chunk's
# depth is <= 4362 (numpy's buffered float64 sum: ~1240), gamma_4362 = 4.8e-13 relative to sum|x|; at 2 GB
# with 2 workers 4096 ran 1.19x faster than 512 (with the prefetch below; benchmarks/).
BLOCK = 4096  # elements per innermost (vectorised, reassociated) block
GROUP = 256  # block sums per group sum
PREFETCH = 4096  # elements ahead the loop asks the cache for (see shmhpc._numba_sum)
FAST_KERNELS = ("sum", "mean")
FAST_DTYPES = ("float32", "float64")
# numba's import and loading its cached loop cost ~0.7 s per worker here (import 0.3 s, load 0.4 s; the
# first run on a machine also compiles, ~1.5 s), and a float64 sum it speeds up saves ~0.07-0.1 s per GB a
# worker reads (numpy casts at ~5-6 GB/s per core): it pays from ~8 GB per worker.
AUTO_MIN_BYTES_PER_WORKER = 8 << 30
START_S = "~0.7 s"
INSTALL_HINT = "pip install 'shmhpc[fast]'"

_sum: Callable[[np.ndarray], float] | None = None


def numba_installed() -> bool:
    """Whether numba can be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def sum_depth(length: int) -> int:
    """Float64 additions on the longest path of :func:`sum_float64` over ``length`` elements."""
    if length <= 1:
        return 0
    return min(length - 1, BLOCK + GROUP + math.ceil(length / (BLOCK * GROUP)))


def load() -> Callable[[np.ndarray], float]:
    """Import numba and load (or compile, the first time on a machine) the summing loop."""
    global _sum
    if _sum is None:
        from ._numba_sum import total_sum  # optional and slow to import: only when the engine is used

        _sum = total_sum
    return _sum


def sum_float64(flat: np.ndarray) -> float:
    """Sum of a 1-D float32/float64 array accumulated in float64 (contiguous; others go through numpy)."""
    if flat.dtype.name not in FAST_DTYPES or not flat.flags.c_contiguous:
        return float(np.sum(flat, dtype=np.float64))
    return float(load()(flat.reshape(-1)))


def choose_engine(requested: str, kernel: str, dtype: str, bytes_per_worker: int, rounds: int) -> tuple[str, str]:
    """(engine, why) for a job: ``numpy`` or ``numba``. Raises ValueError for an impossible ``numba``.

    ``requested`` is the spec's ``engine``; ``bytes_per_worker`` the data one
    worker reads per round; ``rounds`` warm-up plus repeats.
    """
    fits = kernel in FAST_KERNELS and dtype in FAST_DTYPES
    if requested == "numpy":
        return "numpy", "engine: numpy asked for"
    if requested == "numba":
        if not fits:
            raise ValueError(
                f"engine: numba has a fast path for {' and '.join(FAST_KERNELS)} over"
                f" {' and '.join(FAST_DTYPES)} data, not kernel {kernel!r} on {dtype}; use engine auto or numpy"
            )
        if not numba_installed():
            raise ValueError(f"engine: numba is not installed ({INSTALL_HINT}); use engine auto or numpy")
        return "numba", "engine: numba asked for"
    if not fits:
        return "numpy", f"auto: numba has no fast path for kernel {kernel!r} on {dtype}"
    if not numba_installed():
        return "numpy", f"auto: numba is not installed ({INSTALL_HINT} for float64 sums at memory speed)"
    total = bytes_per_worker * rounds
    if total < AUTO_MIN_BYTES_PER_WORKER:
        return "numpy", (
            f"auto: {total / 1e9:.2f} GB read per worker is too little to repay numba's start"
            f" ({START_S}; it pays from {AUTO_MIN_BYTES_PER_WORKER / 1e9:.1f} GB)"
        )
    return "numba", f"auto: {total / 1e9:.1f} GB read per worker repays numba's start ({START_S})"
