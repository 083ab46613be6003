"""The compiled loop behind ``engine: numba`` (imported only when that engine runs; see ``fastsum``).

Signatures are given, so numba compiles on import — or, with ``cache=True``,
loads the machine code it saved the first time (next to this file, or in
numba's user cache directory when the package folder is read-only).
"""

from __future__ import annotations

import numba
import numpy as np

from .fastsum import BLOCK, GROUP

# Workers see the data read-only (mprotect + NumPy's writeable flag), and numba types read-only arrays apart.
_SIGS = [
    numba.float64(numba.types.Array(dtype, 1, "C", readonly=readonly))
    for dtype in (numba.float32, numba.float64)
    for readonly in (True, False)
]
_REASSOC = {"reassoc"}  # only this: the compiler may reorder additions (it vectorises), NaN/inf still propagate


@numba.njit(_SIGS, fastmath=_REASSOC, nogil=True, cache=True, boundscheck=False)
def block_sum(x):
    s = 0.0
    for j in range(x.size):
        s += np.float64(x[j])
    return s


@numba.njit(_SIGS, fastmath=_REASSOC, nogil=True, cache=True, boundscheck=False)
def total_sum(x):
    n = x.size
    total = 0.0
    for g0 in range(0, n, BLOCK * GROUP):
        g1 = min(g0 + BLOCK * GROUP, n)
        group = 0.0
        for b0 in range(g0, g1, BLOCK):
            group += block_sum(x[b0 : min(b0 + BLOCK, g1)])
        total += group
    return total
