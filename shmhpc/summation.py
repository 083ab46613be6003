"""Floating-point summation error bounds and single-process reference sums.

The built-in kernels (:mod:`shmhpc.reductions`) verify against references
built from these pieces. A reference never uses the parallel chunking: it walks
the flattened array in its own blocks, in higher precision (``math.fsum``,
exact integers, or ``np.longdouble``). A tolerance is not a guess: it is the
classical worst-case bound for floating-point summation (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., ch. 4): a sum of ``x_i`` computed
with any order of additions in which no term takes part in more than ``k``
additions has

    |computed - exact| <= gamma_k * sum(|x_i|),   gamma_k = k*u / (1 - k*u),

with ``u`` the unit roundoff of the dtype the additions happen in. A kernel's
tolerance is its own bound plus the reference's own bound plus the final
roundings to a python float. It is a worst case, so real errors are usually
orders of magnitude smaller; a value outside it is wrong, not unlucky.

The depth ``k`` of the kernels' own sums (:func:`sum_depth` for numpy's
pairwise and buffered sums, :func:`block_depth` for the sub-blocked var, std
and norm2) lives here too, beside the bound it feeds. Pure numpy; no kernels,
no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = [
    "FSUM_MAX",
    "NPY_BUFSIZE",
    "PAIRWISE_EXTRA",
    "REF_BLOCK",
    "SUBBLOCK_ELEMENTS",
    "U64",
    "SumReference",
    "abs_sum",
    "block_depth",
    "clog2",
    "exact_int_sum",
    "exact_sumsq",
    "gamma",
    "is_integer",
    "m2_reference",
    "ref_blocks",
    "sqrt_tolerance",
    "sum_depth",
    "sumsq_reference",
    "unit_roundoff",
    "work_dtype",
]

U64 = 2.0**-53  # unit roundoff of float64 (python float)
# numpy's pairwise sum: below 8 elements a plain loop, up to 128 elements 8
# accumulators of <= 16 terms each joined by a 3-level tree, above that halves
# recursively. A term therefore takes part in at most ceil(log2(len)) + 16
# additions (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum).
PAIRWISE_EXTRA = 16
# A reduction that has to cast (float32 data, dtype=float64) runs through
# buffers of NPY_BUFSIZE = 8192 elements: each buffer is summed pairwise and
# the buffer results are added to the accumulator one after another.
NPY_BUFSIZE = 8192
REF_BLOCK = 1 << 20  # reference block: 1M elements (8 MiB float64, 16 MiB longdouble temporary)
FSUM_MAX = 2_000_000  # up to this size the reference sum is exact (math.fsum)
# var/std/norm2 need elementwise temporaries (x - mean, x*x). Working on
# sub-blocks of 2**18 elements (2 MiB in float64) keeps the one reused buffer in
# L2/L3 instead of streaming a second 1 GB array through DRAM.
SUBBLOCK_ELEMENTS = 1 << 18


def gamma(k: int, u: float) -> float:
    """gamma_k = k*u / (1 - k*u); infinite once k*u >= 1 (the bound says nothing)."""
    ku = k * u
    return math.inf if ku >= 1 else ku / (1 - ku)


def clog2(n: int) -> int:
    """ceil(log2(n)) for n >= 1."""
    return max(0, (int(n) - 1).bit_length())


def unit_roundoff(dtype: DTypeLike) -> float:
    """Unit roundoff ``u = eps / 2`` of a float dtype."""
    return float(np.finfo(dtype).eps) / 2


def is_integer(dtype: np.dtype) -> bool:
    """Bool, signed or unsigned integer dtype: sums of these can be exact."""
    return dtype.kind in "biu"


# ---------------------------------------------------------------------------------------------
# depth of the kernels' own sums


def work_dtype(dtype: np.dtype, accumulate: str) -> np.dtype:
    """The dtype var/std/norm2 compute their elementwise temporaries in.

    ``native`` means the array's own float dtype, except float16, which works
    in float32 as numpy's own mean/var do (a float16 square underflows below
    6e-5 and overflows above 255). Integer arrays always go through float64:
    an integer ``x*x`` would overflow, and ``np.var`` or ``np.linalg.norm``
    convert integers to float64 too.
    """
    if accumulate == "native" and dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize < 4 else dtype
    return np.dtype(np.float64)


def sum_depth(length: int, dtype: np.dtype, accumulate: str) -> tuple[int, float] | None:
    """(k, u) for numpy summing one chunk of ``length`` elements; None when the sum is exact."""
    if accumulate == "native":
        if is_integer(dtype):
            return None  # int64/uint64 accumulation is exact unless it wraps, which the exact reference catches
        return clog2(length) + PAIRWISE_EXTRA, unit_roundoff(dtype)
    if dtype == np.float64:
        return clog2(length) + PAIRWISE_EXTRA, U64
    # buffered cast: ceil(len/8192) sequential buffer additions on top of a pairwise sum of 8192,
    # +1 for rounding the cast itself (int64 values beyond 2**53)
    return math.ceil(length / NPY_BUFSIZE) + clog2(NPY_BUFSIZE) + PAIRWISE_EXTRA + 1, U64


def block_depth(length: int, dtype: np.dtype, accumulate: str) -> tuple[int, float]:
    """(k, u) for the sub-blocked var/std/norm2 of one chunk (see ``shmhpc.reductions``).

    Each sub-block of <= SUBBLOCK_ELEMENTS is summed pairwise, the sub-block
    results are merged one after another (ceil(len/SUBBLOCK) more steps), and
    a few elementwise roundings (cast, subtract, square, divide) come on top.
    """
    work = work_dtype(dtype, accumulate)
    sub = min(max(length, 1), SUBBLOCK_ELEMENTS)
    k = clog2(sub) + PAIRWISE_EXTRA + math.ceil(length / SUBBLOCK_ELEMENTS) + 4
    return k, max(unit_roundoff(work), U64)


# ---------------------------------------------------------------------------------------------
# references


def ref_blocks(flat: np.ndarray) -> Iterator[np.ndarray]:
    """The reference's own blocks of ``REF_BLOCK`` elements, independent of the parallel chunks."""
    for start in range(0, flat.size, REF_BLOCK):
        yield flat[start : start + REF_BLOCK]


def _nblocks(n: int) -> int:
    return max(1, math.ceil(n / REF_BLOCK))


def abs_sum(flat: np.ndarray) -> float:
    """sum(|x|) in float64 (only feeds a tolerance; its own relative error ~1e-13 is immaterial)."""
    total = 0.0
    buf = np.empty(min(flat.size, REF_BLOCK), dtype=np.float64)
    for block in ref_blocks(flat):
        d = buf[: block.size]
        np.copyto(d, block, casting="unsafe")  # via float64, so abs(int64 min) cannot wrap
        np.abs(d, out=d)
        total += float(d.sum())
    return total


def exact_int_sum(flat: np.ndarray) -> int:
    """Exact sum of an integer array as a python int.

    Blocks hold 2**20 elements; for dtypes of <= 32 bits every |x| < 2**32, so a
    block sum stays below 2**52 in int64. 64-bit values are split as
    x = hi * 2**32 + lo with 0 <= lo < 2**32 and |hi| <= 2**32, and each half is
    summed the same way.
    """
    total = 0
    for block in ref_blocks(flat):
        if block.dtype.itemsize < 8:
            total += int(np.sum(block, dtype=np.int64))
        else:
            lo = np.bitwise_and(block, 0xFFFFFFFF)
            hi = np.right_shift(block, 32)  # arithmetic shift for int64
            total += (int(np.sum(hi, dtype=np.int64)) << 32) + int(np.sum(lo, dtype=np.int64))
    return total


class SumReference:
    """The reference sum of a flattened array, its own error bound and how it was made.

    Parameters
    ----------
    flat : numpy.ndarray
        The whole array, flattened.

    Attributes
    ----------
    value : int, float or numpy.longdouble
        Exact python int (integer data), ``math.fsum`` (exact, rounded once;
        up to ``FSUM_MAX`` elements) or a blockwise ``np.longdouble`` sum.
    bound : float
        Absolute error bound of ``value`` (0 when exact).
    sum_abs : float
        sum(|x|), the scale of every summation bound.
    exact_int : bool
        Whether ``value`` is an exact python int.
    method : str
        One line: how ``value`` was computed.
    """

    def __init__(self, flat: np.ndarray):
        n = flat.size
        self.n = n
        self.sum_abs = abs_sum(flat)
        self.exact_int = is_integer(flat.dtype)
        if self.exact_int:
            self.value: Any = exact_int_sum(flat)
            self.bound = 0.0
            self.method = f"exact integer sum (python int) over {_nblocks(n)} blocks"
            return
        if n <= FSUM_MAX:
            try:
                # fsum is exact and rounds once; tolist() turns float16/32/64 into python floats exactly
                self.value = math.fsum(flat.tolist())
                self.bound = 0.0
                self.method = f"math.fsum over {n} elements (exact, rounded once)"
                return
            except (OverflowError, ValueError):
                pass  # inf - inf or an intermediate overflow: fall back to numpy semantics below
        u_ref = unit_roundoff(np.longdouble)
        acc = np.longdouble(0)
        with np.errstate(over="ignore", invalid="ignore"):
            for block in ref_blocks(flat):
                acc += np.sum(block, dtype=np.longdouble)
        self.value = acc
        # the reference is itself a buffered cast (float -> longdouble): the same depth formula as
        # a float64-accumulated kernel sum, plus the sequential accumulation of the blocks
        k_ref = math.ceil(min(n, REF_BLOCK) / NPY_BUFSIZE) + clog2(NPY_BUFSIZE) + PAIRWISE_EXTRA + 1
        k_ref += _nblocks(n)
        self.bound = gamma(k_ref, u_ref) * self.sum_abs
        bits = np.finfo(np.longdouble).nmant + 1
        self.method = f"np.longdouble ({bits}-bit significand) sums over {_nblocks(n)} blocks of {REF_BLOCK}"

    def as_float(self) -> float:
        """The sum rounded to a python float."""
        return float(self.value)

    def mean(self) -> float:
        """The sum divided by the element count, as a python float."""
        if isinstance(self.value, int):
            return self.value / self.n  # int / int: correctly rounded
        return float(self.value / self.n)


def exact_sumsq(flat: np.ndarray) -> float | None:
    """Exactly rounded sum(x**2) for float data of up to ``FSUM_MAX`` elements, or None.

    Veltkamp's split x = hi + lo (hi with 26 significant bits, lo with <= 26)
    makes hi*hi, 2*hi*lo and lo*lo exact in float64, so x**2 is their exact sum
    and math.fsum adds everything exactly (Dekker 1971).
    """
    if flat.dtype.kind != "f" or flat.size > FSUM_MAX:
        return None
    x = flat.astype(np.float64)
    if x.size and not (np.all(np.isfinite(x)) and float(np.max(np.abs(x))) < 2.0**480):
        return None  # the split would overflow; use longdouble
    c = x * 134217729.0  # 2**27 + 1
    hi = c - (c - x)
    lo = x - hi
    try:
        return math.fsum(np.concatenate([hi * hi, 2.0 * hi * lo, lo * lo]).tolist())
    except OverflowError:
        return None


def m2_reference(flat: np.ndarray, mean: float) -> tuple[float, int]:
    """sum((x - mean)**2) in longdouble blocks (the second pass of a variance; mean 0 gives sum(x**2)).

    Returns the sum and the number of blocks.
    """
    m = np.longdouble(mean)
    acc = np.longdouble(0)
    buf = np.empty(min(flat.size, REF_BLOCK), dtype=np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        for block in ref_blocks(flat):
            d = buf[: block.size]
            np.copyto(d, block, casting="unsafe")
            d -= m
            d *= d
            acc += d.sum()
    return float(acc), _nblocks(flat.size)


def sumsq_reference(flat: np.ndarray) -> tuple[float, float, str]:
    """(sum(x**2) as float, its absolute error bound, method)."""
    exact = exact_sumsq(flat)
    if exact is not None:
        return exact, 0.0, f"math.fsum of exactly split squares over {flat.size} elements (exact, rounded once)"
    q, nblocks = m2_reference(flat, 0.0)  # the squares about 0, in longdouble blocks
    k_ref = clog2(min(flat.size, REF_BLOCK) or 1) + PAIRWISE_EXTRA + nblocks + 1
    bits = np.finfo(np.longdouble).nmant + 1
    method = f"squares summed in np.longdouble ({bits}-bit significand) over {nblocks} blocks"
    return q, gamma(k_ref, unit_roundoff(np.longdouble)) * q, method


def sqrt_tolerance(tol: float, ref_sq: float) -> float:
    """Turn a bound on a squared quantity into one on its square root.

    |sqrt(a) - sqrt(b)| = |a - b| / (sqrt(a) + sqrt(b)) <= min(|a-b| / sqrt(b), sqrt(|a-b|));
    the true b is only known to lie within tol of ref_sq, so its smallest
    possible value goes in the denominator.
    """
    if not math.isfinite(tol):
        return tol
    low = ref_sq - tol
    if low > 0:
        return min(tol / math.sqrt(low), math.sqrt(tol))
    return math.sqrt(tol)
