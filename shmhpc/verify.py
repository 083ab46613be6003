"""Independent single-process check of a parallel reduction, with a derived tolerance.

The reference never uses the parallel chunking: it walks the flattened array in
its own blocks, in higher precision (``math.fsum``, exact integers, or
``np.longdouble``). The tolerance is not a guess: it is the classical
worst-case bound for floating-point summation (Higham, *Accuracy and Stability
of Numerical Algorithms*, 2nd ed., ch. 4): a sum of ``x_i`` computed with any
order of additions in which no term takes part in more than ``k`` additions
has

    |computed - exact| <= gamma_k * sum(|x_i|),   gamma_k = k*u / (1 - k*u),

with ``u`` the unit roundoff of the dtype the additions happen in. The
tolerance is our bound plus the reference's own bound plus the final roundings
to a python float. It is a worst case, so real errors are usually orders of
magnitude smaller; a value outside it is wrong, not unlucky.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .errors import RunError
from .kernels import SUBBLOCK_ELEMENTS, Kernel, _work_dtype

__all__ = ["verify"]

_U64 = 2.0**-53  # unit roundoff of float64 (python float)
# numpy's pairwise sum: below 8 elements a plain loop, up to 128 elements 8
# accumulators of <= 16 terms each joined by a 3-level tree, above that halves
# recursively. A term therefore takes part in at most ceil(log2(len)) + 16
# additions (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum).
_PAIRWISE_EXTRA = 16
# A reduction that has to cast (float32 data, dtype=float64) runs through
# buffers of NPY_BUFSIZE = 8192 elements: each buffer is summed pairwise and
# the buffer results are added to the accumulator one after another.
_NPY_BUFSIZE = 8192
_REF_BLOCK = 1 << 20  # reference block: 1M elements (8 MiB float64, 16 MiB longdouble temporary)
_FSUM_MAX = 2_000_000  # up to this size the reference sum is exact (math.fsum)
_USER_ONE_CALL_BYTES = 256 << 20
_USER_BLOCK_BYTES = 64 << 20
_DEFAULT_RTOL = 1e-6


def _gamma(k: int, u: float) -> float:
    """gamma_k = k*u / (1 - k*u); infinite once k*u >= 1 (the bound says nothing)."""
    ku = k * u
    return math.inf if ku >= 1 else ku / (1 - ku)


def _clog2(n: int) -> int:
    """ceil(log2(n)) for n >= 1."""
    return max(0, (int(n) - 1).bit_length())


def _u(dtype: DTypeLike) -> float:
    return float(np.finfo(dtype).eps) / 2


def _is_integer(dtype: np.dtype) -> bool:
    return dtype.kind in "biu"


def _sum_depth(length: int, dtype: np.dtype, accumulate: str) -> tuple[int, float] | None:
    """(k, u) for numpy summing one chunk of ``length`` elements; None when the sum is exact."""
    if accumulate == "native":
        if _is_integer(dtype):
            return None  # int64/uint64 accumulation is exact unless it wraps, which the exact reference catches
        return _clog2(length) + _PAIRWISE_EXTRA, _u(dtype)
    if dtype == np.float64:
        return _clog2(length) + _PAIRWISE_EXTRA, _U64
    # buffered cast: ceil(len/8192) sequential buffer additions on top of a pairwise sum of 8192,
    # +1 for rounding the cast itself (int64 values beyond 2**53)
    return math.ceil(length / _NPY_BUFSIZE) + _clog2(_NPY_BUFSIZE) + _PAIRWISE_EXTRA + 1, _U64


def _block_depth(length: int, dtype: np.dtype, accumulate: str) -> tuple[int, float]:
    """(k, u) for the sub-blocked var/std/norm2 of one chunk (see kernels._Builtin._moments).

    Each sub-block of <= SUBBLOCK_ELEMENTS is summed pairwise, the sub-block
    results are merged one after another (ceil(len/SUBBLOCK) more steps), and
    a few elementwise roundings (cast, subtract, square, divide) come on top.
    """
    work = _work_dtype(dtype, accumulate)
    sub = min(max(length, 1), SUBBLOCK_ELEMENTS)
    k = _clog2(sub) + _PAIRWISE_EXTRA + math.ceil(length / SUBBLOCK_ELEMENTS) + 4
    return k, max(_u(work), _U64)


# ---------------------------------------------------------------------------------------------
# references


def _blocks(flat: np.ndarray):
    for start in range(0, flat.size, _REF_BLOCK):
        yield flat[start : start + _REF_BLOCK]


def _sum_abs(flat: np.ndarray) -> float:
    """sum(|x|) in float64 (only feeds the tolerance; its own relative error ~1e-13 is immaterial)."""
    total = 0.0
    buf = np.empty(min(flat.size, _REF_BLOCK), dtype=np.float64)
    for block in _blocks(flat):
        d = buf[: block.size]
        np.copyto(d, block, casting="unsafe")  # via float64, so abs(int64 min) cannot wrap
        np.abs(d, out=d)
        total += float(d.sum())
    return total


def _exact_int_sum(flat: np.ndarray) -> int:
    """Exact sum of an integer array as a python int.

    Blocks hold 2**20 elements; for dtypes of <= 32 bits every |x| < 2**32, so a
    block sum stays below 2**52 in int64. 64-bit values are split as
    x = hi * 2**32 + lo with 0 <= lo < 2**32 and |hi| <= 2**32, and each half is
    summed the same way.
    """
    total = 0
    for block in _blocks(flat):
        if block.dtype.itemsize < 8:
            total += int(np.sum(block, dtype=np.int64))
        else:
            lo = np.bitwise_and(block, 0xFFFFFFFF)
            hi = np.right_shift(block, 32)  # arithmetic shift for int64
            total += (int(np.sum(hi, dtype=np.int64)) << 32) + int(np.sum(lo, dtype=np.int64))
    return total


class _SumRef:
    """The reference sum: ``value`` (exact python int/float, or longdouble), its error bound and method."""

    def __init__(self, flat: np.ndarray):
        n = flat.size
        self.n = n
        self.sum_abs = _sum_abs(flat)
        self.exact_int = _is_integer(flat.dtype)
        if self.exact_int:
            self.value: Any = _exact_int_sum(flat)
            self.bound = 0.0
            self.method = f"exact integer sum (python int) over {self._nblocks()} blocks"
            return
        if n <= _FSUM_MAX:
            try:
                # fsum is exact and rounds once; tolist() turns float16/32/64 into python floats exactly
                self.value = math.fsum(flat.tolist())
                self.bound = 0.0
                self.method = f"math.fsum over {n} elements (exact, rounded once)"
                return
            except (OverflowError, ValueError):
                pass  # inf - inf or an intermediate overflow: fall back to numpy semantics below
        u_ref = _u(np.longdouble)
        acc = np.longdouble(0)
        with np.errstate(over="ignore", invalid="ignore"):
            for block in _blocks(flat):
                acc += np.sum(block, dtype=np.longdouble)
        self.value = acc
        # the reference is itself a buffered cast (float -> longdouble): same depth formula as ours,
        # plus the sequential accumulation of the blocks
        k_ref = math.ceil(min(n, _REF_BLOCK) / _NPY_BUFSIZE) + _clog2(_NPY_BUFSIZE) + _PAIRWISE_EXTRA + 1
        k_ref += self._nblocks()
        self.bound = _gamma(k_ref, u_ref) * self.sum_abs
        bits = np.finfo(np.longdouble).nmant + 1
        self.method = f"np.longdouble ({bits}-bit significand) sums over {self._nblocks()} blocks of {_REF_BLOCK}"

    def _nblocks(self) -> int:
        return max(1, math.ceil(self.n / _REF_BLOCK))

    def as_float(self) -> float:
        return float(self.value)

    def mean(self) -> float:
        if isinstance(self.value, int):
            return self.value / self.n  # int / int: correctly rounded
        return float(self.value / self.n)


def _exact_sumsq(flat: np.ndarray) -> float | None:
    """Exactly rounded sum(x**2) for float data of up to _FSUM_MAX elements, or None.

    Veltkamp's split x = hi + lo (hi with 26 significant bits, lo with <= 26)
    makes hi*hi, 2*hi*lo and lo*lo exact in float64, so x**2 is their exact sum
    and math.fsum adds everything exactly (Dekker 1971).
    """
    if flat.dtype.kind != "f" or flat.size > _FSUM_MAX:
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


def _sumsq_ref(flat: np.ndarray) -> tuple[float, float, str]:
    """(sum(x**2) as float, its absolute error bound, method)."""
    exact = _exact_sumsq(flat)
    if exact is not None:
        return exact, 0.0, f"math.fsum of exactly split squares over {flat.size} elements (exact, rounded once)"
    q, nblocks = _m2_ref(flat, 0.0)  # the squares about 0, in longdouble blocks
    k_ref = _clog2(min(flat.size, _REF_BLOCK) or 1) + _PAIRWISE_EXTRA + nblocks + 1
    bits = np.finfo(np.longdouble).nmant + 1
    method = f"squares summed in np.longdouble ({bits}-bit significand) over {nblocks} blocks"
    return q, _gamma(k_ref, _u(np.longdouble)) * q, method


def _m2_ref(flat: np.ndarray, mean: float) -> tuple[float, int]:
    """sum((x - mean)**2) in longdouble blocks (the second pass of var; mean 0 gives sum(x**2)).

    Returns the sum and the number of blocks."""
    m = np.longdouble(mean)
    acc = np.longdouble(0)
    buf = np.empty(min(flat.size, _REF_BLOCK), dtype=np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        for block in _blocks(flat):
            d = buf[: block.size]
            np.copyto(d, block, casting="unsafe")
            d -= m
            d *= d
            acc += d.sum()
    return float(acc), max(1, math.ceil(flat.size / _REF_BLOCK))


def _sqrt_tol(tol: float, ref_sq: float) -> float:
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


def _builtin_reference(name: str, array: np.ndarray, accumulate: str, chunk_sizes: list[int]) -> tuple:
    """(reference, tolerance, method) for a built-in kernel."""
    flat = array.reshape(-1)
    n = flat.size
    sizes = [int(c) for c in chunk_sizes]
    longest = max(sizes) if sizes else n
    nchunks = max(1, len(sizes))  # partial states are combined one after another in the launcher

    if name in ("min", "max"):
        if n == 0:
            return math.nan, 0.0, "empty array"
        ref = (np.min(flat) if name == "min" else np.max(flat)).item()
        return ref, 0.0, f"np.{name} over the whole array (exact: the result is one of the elements)"

    if name in ("sum", "mean"):
        s = _SumRef(flat)
        depth = _sum_depth(longest, array.dtype, accumulate)
        if depth is None:
            ours = 0.0
        else:
            k, u = depth
            ours = _gamma(k + nchunks, u) * s.sum_abs
        if name == "sum":
            ref = s.value if s.exact_int else s.as_float()
            rounding = 0.0 if s.exact_int else _U64 * abs(ref)  # the reference rounded to a python float
            return ref, ours + s.bound + rounding, s.method
        if n == 0:
            return math.nan, 0.0, "empty array"
        ref = s.mean()
        # both means divide by n and round: our sum's bound and the reference's scale by 1/n,
        # plus up to three roundings (reference sum, reference division, our division)
        return ref, (ours + s.bound) / n + 3 * _U64 * abs(ref), s.method + ", divided by n"

    if name == "norm2":
        q, q_bound, method = _sumsq_ref(flat)
        k, u = _block_depth(longest, array.dtype, accumulate)
        tol_q = _gamma(k + nchunks, u) * q + q_bound + _U64 * q
        ref = math.sqrt(q)
        return ref, _sqrt_tol(tol_q, q) + 2 * _U64 * ref, method + ", then sqrt"

    # var / std: two-pass reference (mean first, then sum((x - mean)**2)).
    if n == 0:
        return math.nan, 0.0, "empty array"
    s = _SumRef(flat)
    mean = s.mean()
    m2, nblocks = _m2_ref(flat, mean)
    var_ref = m2 / n
    sumsq = m2 + n * mean * mean  # sum(x**2) = M2 + n*mean**2, no third pass needed
    # Tolerance on the variance. Within a sub-block the two-pass M2 = sum((x - m)**2)
    # with a computed mean m = mean + e, |e| <= gamma*sum|x|/len, is
    # sum((x - mean)**2) + len*e**2, and len*e**2 <= gamma**2 * sum(x**2) by
    # Cauchy-Schwarz; squaring and summing the differences adds gamma*M2 <=
    # gamma*sum(x**2). Chan's merge adds delta**2*na*nb/n with delta computed from
    # means carrying the same kind of error, again O(gamma*sum(x**2)). Collecting
    # terms, |M2 - M2_exact| <= c*gamma*sum(x**2) with a small c; we take c = 4,
    # i.e. tol_var = 4*gamma*sum(x**2)/n.
    k, u = _block_depth(longest, array.dtype, accumulate)
    ours = 4 * _gamma(k + nchunks, u) * sumsq / n
    k_ref = _clog2(min(n, _REF_BLOCK)) + _PAIRWISE_EXTRA + nblocks + 4
    theirs = 4 * _gamma(k_ref, _u(np.longdouble)) * sumsq / n  # the reference's own two-pass bound
    tol_var = ours + theirs + 2 * _U64 * abs(var_ref)
    method = f"two-pass: mean from {s.method}, then sum((x-mean)**2) in np.longdouble over {nblocks} blocks"
    if name == "var":
        return var_ref, tol_var, method
    std_ref = math.sqrt(var_ref) if var_ref >= 0 else math.nan
    return std_ref, _sqrt_tol(tol_var, var_ref) + 2 * _U64 * std_ref, method + ", then sqrt"


# ---------------------------------------------------------------------------------------------
# user kernels


def _user_reference(kernel: Kernel, array: np.ndarray) -> tuple[Any, str]:
    try:
        if array.nbytes <= _USER_ONE_CALL_BYTES or array.ndim == 0 or array.shape[0] == 0:
            ref = kernel.finalize(kernel.map(array))
            return ref, "same user kernel run single-process over the whole array in one call"
        row_bytes = max(1, array.nbytes // array.shape[0])
        rows = max(1, _USER_BLOCK_BYTES // row_bytes)
        state = None
        nblocks = 0
        for start in range(0, array.shape[0], rows):
            part = kernel.map(array[start : start + rows])
            state = part if nblocks == 0 else kernel.combine(state, part)
            nblocks += 1
        method = (
            f"same user kernel run single-process over {nblocks} row blocks of {rows} rows (~64 MiB),"
            " combined with the kernel's combine"
        )
        return kernel.finalize(state), method
    except RunError:
        raise
    except Exception as exc:
        raise RunError(
            f"verify: kernel {kernel.name!r} raised while computing the reference: {type(exc).__name__}: {exc}"
        ) from None


# ---------------------------------------------------------------------------------------------
# comparison


def _rel(abs_error: float, ref_mag: float) -> float:
    if ref_mag == 0 or not math.isfinite(ref_mag):
        return 0.0 if abs_error == 0 else math.inf
    return abs_error / ref_mag


def _compare_scalar(value: Any, ref: Any, tol: float) -> tuple[float, float, bool, str]:
    """(abs_error, rel_error, within, detail) for two scalars."""
    try:
        v = value if isinstance(value, int) and not isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return math.inf, math.inf, False, f"value {value!r} is not a number"
    r = ref
    v_nan = isinstance(v, float) and math.isnan(v)
    r_nan = isinstance(r, float) and math.isnan(r)
    if v_nan and r_nan:
        return 0.0, 0.0, True, "value and reference are both NaN (the data contains NaN)"
    if v_nan or r_nan:
        return math.inf, math.inf, False, f"value {v!r} but reference {r!r}"
    if math.isinf(v) or math.isinf(r):
        if v == r:
            return 0.0, 0.0, True, f"value and reference are both {r!r}"
        return math.inf, math.inf, False, f"value {v!r} but reference {r!r} (overflow?)"
    abs_error = float(abs(Fraction(v) - Fraction(r)))  # exact difference, rounded once
    rel_error = _rel(abs_error, abs(float(r)))
    if abs_error <= tol:
        return abs_error, rel_error, True, ""
    if tol == 0:
        why = f"value {v!r} != reference {r!r}, exact match required"
    else:
        why = f"|value - reference| = {abs_error:.3g} exceeds the tolerance {tol:.3g}"
    return abs_error, rel_error, False, why


def _compare_user(value: Any, ref: Any, rtol: float, atol: float) -> tuple[float, float, float, bool, str]:
    """(abs_error, rel_error, tolerance, within, detail) elementwise: |v - r| <= atol + rtol*|r|."""
    try:
        v = np.asarray(value, dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return math.inf, math.inf, math.nan, False, f"value or reference is not numeric: {exc}"
    finite_r = np.abs(r[np.isfinite(r)])
    ref_mag = float(finite_r.max()) if finite_r.size else 0.0
    tol_report = atol + rtol * ref_mag
    if v.shape != r.shape:
        why = f"shape {v.shape} of the value != shape {r.shape} of the reference"
        return math.inf, math.inf, tol_report, False, why
    with np.errstate(invalid="ignore"):
        both_nan = np.isnan(v) & np.isnan(r)
        same = (v == r) | both_nan  # also covers equal infinities
        err = np.where(same, 0.0, np.abs(v - r))
        err = np.where(np.isnan(err), np.inf, err)  # one side NaN, the other not
        tol = atol + rtol * np.abs(r)
        tol = np.where(np.isnan(tol), 0.0, tol)
    bad = ~(err <= tol)
    abs_error = float(err.max()) if err.size else 0.0
    rel_error = _rel(abs_error, ref_mag)
    nan_note = "NaN in the value matches NaN in the reference" if bool(both_nan.any()) else ""
    if not bad.any():
        return abs_error, rel_error, tol_report, True, nan_note
    idx = np.unravel_index(int(np.argmax(np.where(bad, err - tol, -np.inf))), err.shape) if err.ndim else ()
    where = f"element {list(map(int, idx))}: " if err.ndim else ""
    why = f"{where}|value - reference| = {float(err[idx]):.3g} exceeds atol + rtol*|reference| = {float(tol[idx]):.3g}"
    return abs_error, rel_error, tol_report, False, why


def verify(
    kernel: Kernel,
    value: Any,
    array: np.ndarray,
    *,
    accumulate: str,
    chunk_sizes: list[int],
    count: int | None,
) -> dict:
    """Check a parallel result against an independent single-process reference.

    Parameters
    ----------
    kernel : Kernel
        The kernel that produced ``value`` (from :func:`shmhpc.kernels.make_kernel`).
    value : float, int or list
        The finalized parallel result.
    array : numpy.ndarray
        The whole shared array.
    accumulate : {"float64", "native"}
        The accumulation mode the chunks were reduced with (built-ins only).
    chunk_sizes : list of int
        Number of *elements* (``chunk.size``) of each chunk that was mapped;
        the longest one and their number set the error bound.
    count : int or None
        The element count ``n`` from the combined built-in state
        (:func:`shmhpc.kernels.state_count`), ``None`` for user kernels.

    Returns
    -------
    dict
        ``kernel``, ``value``, ``reference``, ``abs_error``, ``rel_error``,
        ``tolerance``, ``verified``, ``method`` (how the reference was made),
        ``count_ok`` (``count == array.size``, ``None`` without a count) and
        ``detail`` (one line: why it failed, a NaN note, or ``""``). Values
        may be ``nan``/``inf`` floats when the data holds them.

    Notes
    -----
    Built-ins: min/max must match exactly. Sums use the bound
    ``gamma_k * sum|x|`` (see the module docstring) with ``k`` from numpy's
    pairwise depth for the longest chunk plus one step per chunk; mean divides
    it by ``n``; norm2 bounds ``sum(x**2)`` the same way and takes the square
    root; var uses ``4 * gamma_k * sum(x**2) / n`` and std its square root.
    User kernels: the same kernel run single-process, tolerance
    ``atol + rtol * |reference|`` elementwise (kernel attributes, defaults 0
    and 1e-6). A NaN result matching a NaN reference counts as verified.
    """
    array = np.asarray(array)
    count_ok = None if count is None else int(count) == array.size
    if kernel.builtin:
        reference, tolerance, method = _builtin_reference(kernel.name, array, accumulate, chunk_sizes)
        abs_error, rel_error, within, detail = _compare_scalar(value, reference, tolerance)
    else:
        reference, method = _user_reference(kernel, array)
        rtol = float(getattr(kernel, "rtol", _DEFAULT_RTOL))
        atol = float(getattr(kernel, "atol", 0.0))
        abs_error, rel_error, tolerance, within, detail = _compare_user(value, reference, rtol, atol)
        method += f"; tolerance atol + rtol*|reference| with rtol={rtol:g}, atol={atol:g}"
    if count is not None and not count_ok:
        missing = array.size - int(count)
        what = f"{missing} elements were not reduced" if missing > 0 else f"{-missing} elements were reduced twice"
        detail = f"count {int(count)} != array size {array.size}: {what}" + (f"; {detail}" if detail else "")
    verified = bool(within and count_ok is not False)
    return {
        "kernel": kernel.name,
        "value": value,
        "reference": reference,
        "abs_error": abs_error,
        "rel_error": rel_error,
        "tolerance": float(tolerance),
        "verified": verified,
        "method": method,
        "count_ok": count_ok,
        "detail": detail,
    }
