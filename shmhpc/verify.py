"""Independent single-process check of a parallel reduction, with a derived tolerance.

A built-in kernel brings its own reference and tolerance
(:meth:`shmhpc.reductions.BuiltinKernel.reference` and ``tolerance``): a
reference that never uses the parallel chunking, computed in higher precision,
and a tolerance derived from the floating-point summation error bound of both
sides (see :mod:`shmhpc.summation`). A user kernel is rerun whole, single
process, and compared with ``atol + rtol*|reference|``. This module compares
and reports; it knows no kernel by name.

NaN and inf make a comparison mean nothing (NaN equals NaN here, inf equals inf): the data's
non-finite values are counted, in blocks, and a check whose value, reference or tolerance is not
finite is reported as ``not meaningful`` (``verified`` null), never as verified.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import RunError
from .kernels import BuiltinKernel, Kernel

__all__ = ["count_nonfinite", "count_nonfinite_values", "describe_nonfinite", "verify"]

_USER_ONE_CALL_BYTES = 256 << 20
_USER_BLOCK_BYTES = 64 << 20
_DEFAULT_RTOL = 1e-6
_SCAN_BLOCK = 1 << 22  # elements per block of the non-finite scan: a 4 MiB boolean buffer
_NONFINITE_NAMES = {"nan": "NaN", "posinf": "+inf", "neginf": "-inf"}


# ---------------------------------------------------------------------------------------------
# non-finite values


def count_nonfinite(array: np.ndarray) -> dict[str, int] | None:
    """``{"nan": n, "posinf": n, "neginf": n}`` in a floating-point array; None for other dtypes.

    Counted in blocks of ``_SCAN_BLOCK`` elements into one boolean buffer: no temporary the size of
    the array, and a block with no NaN or inf costs one ``isfinite`` pass.
    """
    if array.dtype.kind != "f":
        return None
    flat = array.reshape(-1)
    counts = dict.fromkeys(_NONFINITE_NAMES, 0)
    buf = np.empty(min(flat.size, _SCAN_BLOCK), dtype=bool)
    for start in range(0, flat.size, _SCAN_BLOCK):
        block = flat[start : start + _SCAN_BLOCK]
        mask = buf[: block.size]
        if np.isfinite(block, out=mask).all():
            continue
        counts["nan"] += int(np.count_nonzero(np.isnan(block, out=mask)))
        counts["posinf"] += int(np.count_nonzero(np.equal(block, np.inf, out=mask)))
        counts["neginf"] += int(np.count_nonzero(np.equal(block, -np.inf, out=mask)))
    return counts


def count_nonfinite_values(x: Any) -> int | None:
    """How many elements of a result (a number or nested lists) are NaN or inf; None when it is not numeric."""
    if isinstance(x, int):
        return 0  # a python int (an exact integer sum) is finite however large
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _data_text(counts: dict[str, int], size: int) -> str:
    """``the data has 3 NaN and 1 +inf values (of 300,000)``."""
    parts = [f"{n:,} {_NONFINITE_NAMES[k]}" for k, n in counts.items() if n]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"the data has {listed} value{'' if sum(counts.values()) == 1 else 's'} (of {size:,})"


def _value_text(value: Any, n: int) -> str:
    """``the result is nan`` for a number, ``2 of 10 result elements are NaN or inf`` for lists."""
    if np.ndim(value) == 0:
        return f"the result is {float(value)!r}"
    return f"{n:,} of {int(np.size(value)):,} result elements are NaN or inf"


def describe_nonfinite(result: dict[str, Any], size: int) -> str | None:
    """One line on the non-finite values a result saw (data of ``size`` elements, the value), or None.

    ``result`` is the report's ``result`` (from :func:`verify`, or a run without verification that
    has only ``value_nonfinite``). A check not meaningful for another reason (a non-finite tolerance)
    is described by its ``detail``.
    """
    parts = []
    counts = result.get("nonfinite")
    if counts and any(counts.values()):
        parts.append(_data_text(counts, size))
    if result.get("value_nonfinite"):
        parts.append(_value_text(result.get("value"), result["value_nonfinite"]))
    if not parts:
        return result.get("detail") if result.get("check") == "not meaningful" else None
    return "; ".join(parts)


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
    r_nan = isinstance(r, (float, np.floating)) and math.isnan(r)
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
    with np.errstate(invalid="ignore", over="ignore"):
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
        ``tolerance``, ``check`` (``"ok"``, ``"failed"`` or ``"not meaningful"``),
        ``verified`` (True, False, or None when not meaningful), ``method``
        (how the reference was made), ``count_ok`` (``count == array.size``,
        ``None`` without a count), ``detail`` (one line: why it failed or
        means nothing, or ``""``), ``nonfinite`` (``{"nan", "posinf",
        "neginf"}`` counts in the data; None for non-float data) and
        ``value_nonfinite`` / ``reference_nonfinite`` (non-finite elements of
        each; None when not numeric). Values may be ``nan``/``inf`` floats.

    Notes
    -----
    Built-ins: the kernel's own ``reference`` and ``tolerance`` (see
    :mod:`shmhpc.reductions`): min/max must match exactly; sums use the bound
    ``gamma_k * sum|x|`` (see :mod:`shmhpc.summation`) with ``k`` from numpy's
    pairwise depth for the longest chunk plus one step per chunk; mean divides
    it by ``n``; norm2 bounds ``sum(x**2)`` the same way and takes the square
    root; var uses ``4 * gamma_k * sum(x**2) / n`` and std its square root.
    ``accumulate`` must be the kernel's own (``RunError`` otherwise).
    User kernels: the same kernel run single-process, tolerance
    ``atol + rtol * |reference|`` elementwise (kernel attributes, defaults 0
    and 1e-6).
    Non-finite values: a value and reference that disagree (inf against a
    finite reference: an overflow; NaN against a number) fail. When they
    agree but hold NaN or inf, or the tolerance is not finite, the check is
    ``not meaningful``: NaN matching NaN proves nothing. Non-finite data whose
    value and reference are both finite (min of data holding +inf, a
    nan-aware user kernel) is compared as usual; its counts are reported.
    """
    array = np.asarray(array)
    count_ok = None if count is None else int(count) == array.size
    if isinstance(kernel, BuiltinKernel):
        if accumulate != kernel.accumulate:
            raise RunError(f"verify: kernel {kernel.name!r} accumulated in {kernel.accumulate}, not in {accumulate}")
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an inf, reported below
            ref = kernel.reference(array.reshape(-1))
            tolerance = kernel.tolerance(ref, chunk_sizes)
        reference, method = ref.value, ref.method
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
    nonfinite = count_nonfinite(array)
    value_nf, reference_nf = count_nonfinite_values(value), count_nonfinite_values(reference)
    if not within or count_ok is False:
        check = "failed"
    elif value_nf or reference_nf or not math.isfinite(tolerance):
        check = "not meaningful"
        if nonfinite and any(nonfinite.values()):
            why = _data_text(nonfinite, array.size)
        elif value_nf:
            why = _value_text(value, value_nf) + ", as in the reference, from finite data"
        else:
            why = f"the tolerance is {float(tolerance)!r}: it would accept any value"
        detail = f"{why}; a comparison with a reference means nothing"
    else:
        check = "ok"
    return {
        "kernel": kernel.name,
        "value": value,
        "reference": reference,
        "abs_error": abs_error,
        "rel_error": rel_error,
        "tolerance": float(tolerance),
        "check": check,
        "verified": {"ok": True, "failed": False}.get(check),
        "method": method,
        "count_ok": count_ok,
        "detail": detail,
        "nonfinite": nonfinite,
        "value_nonfinite": value_nf,
        "reference_nonfinite": reference_nf,
    }
