"""The compiled loop behind ``engine: numba`` (imported only when that engine runs; see ``fastsum``).

Signatures are given, so numba compiles on import — or, with ``cache=True``,
loads the machine code it saved the first time (next to this file, or in
numba's user cache directory when the package folder is read-only).

On 4 KiB pages the hardware prefetcher stops at every page boundary, and a
float32 -> float64 loop has too many instructions per cache line for the CPU
to run far ahead by itself: asking for the data ``PREFETCH`` elements ahead
made it 1.19x faster with 2 workers on 2 GB (18.1 vs 15.1 GB/s, where
BLAS ``ddot`` on the same bytes ran at 20.5; ``benchmarks/``).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

from .fastsum import BLOCK, GROUP, PREFETCH

# Workers see the data read-only (mprotect + NumPy's writeable flag), and numba types read-only arrays apart.
_SIGS = [
    numba.float64(numba.types.Array(dtype, 1, "C", readonly=readonly))
    for dtype in (numba.float32, numba.float64)
    for readonly in (True, False)
]
_REASSOC = {"reassoc"}  # only this: the compiler may reorder additions (it vectorises), NaN/inf still propagate


@intrinsic
def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
    """``llvm.prefetch`` (read, keep in all cache levels) of element ``idx`` of a 1-D array."""
    sig = numba.types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        builder.call(
            cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8"), [ptr, i32(0), i32(3), i32(1)]
        )
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(_SIGS, fastmath=_REASSOC, nogil=True, cache=True, boundscheck=False)
def block_sum(x):
    s = 0.0
    for j in range(x.size):
        s += np.float64(x[j])
    return s


def _total_sum(x, prefetch):
    n = x.size
    total = 0.0
    for g0 in range(0, n, BLOCK * GROUP):
        g1 = min(g0 + BLOCK * GROUP, n)
        group = 0.0
        for b0 in range(g0, g1, BLOCK):
            if prefetch:
                for p in range(b0 + PREFETCH, min(b0 + PREFETCH + BLOCK, n), 16):
                    _prefetch(x, p)  # a line (16 float32 / 8 float64: twice per line) PREFETCH elements ahead
            group += block_sum(x[b0 : min(b0 + BLOCK, g1)])
        total += group
    return total


def _prefetching(x):
    return _total_sum(x, True)


def _plain(x):
    return _total_sum(x, False)


_total_sum = numba.njit(fastmath=_REASSOC, nogil=True, cache=True, boundscheck=False)(_total_sum)
try:
    total_sum = numba.njit(_SIGS, fastmath=_REASSOC, nogil=True, cache=True, boundscheck=False)(_prefetching)
except Exception:  # an LLVM that names the prefetch intrinsic differently: the same loop without it
    total_sum = numba.njit(_SIGS, fastmath=_REASSOC, nogil=True, cache=True, boundscheck=False)(_plain)
