"""The built-in kernels, one class each, and their registry.

Each class carries everything about its reduction: ``map`` / ``combine`` /
``finalize`` for the parallel run, and ``reference`` / ``tolerance`` for the
independent single-process check (:func:`shmhpc.verify.verify`), with the
error bound its tolerance comes from. The registry (:data:`BUILTINS`, filled
by :func:`register_kernel`) is the one list of built-ins: ``make_kernel``, its
error messages and ``describe_kernel`` read it, so adding a kernel is one
decorated class.

Every built-in state starts with the element count ``n`` so the verifier can
check that no element was skipped or reduced twice:

============  ===================  =============================================
kernel        state                combine
============  ===================  =============================================
sum, mean     ``(n, s)``           ``(na + nb, sa + sb)``
min, max      ``(n, v)``           NaN-propagating min/max; ``v`` is ``None``
                                   for an empty chunk
var, std      ``(n, mean, M2)``    Chan, Golub & LeVeque's parallel update
norm2         ``(n, sumsq)``       ``(na + nb, qa + qb)``
============  ===================  =============================================

``s`` is a python ``float``, except for a ``native`` sum of an integer (or
bool) array, where it is a python ``int`` so that the combine stays exact.
``v`` keeps the element's own kind (``int`` for integer arrays, ``float``
otherwise): a min or max is one of the elements and needs no rounding.

The tolerances are summation error bounds ``gamma_k * sum|x|`` (Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., ch. 4; see
:mod:`shmhpc.summation`) with ``k`` the depth of the additions each kernel
really does. This module does no I/O and starts no processes.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from . import fastsum
from .errors import RunError, SpecError
from .summation import (
    PAIRWISE_EXTRA,
    REF_BLOCK,
    SUBBLOCK_ELEMENTS,
    U64,
    SumReference,
    block_depth,
    clog2,
    gamma,
    is_integer,
    m2_reference,
    sqrt_tolerance,
    sum_depth,
    sumsq_reference,
    unit_roundoff,
    work_dtype,
)

__all__ = [
    "BUILTINS",
    "BuiltinKernel",
    "Reference",
    "builtin_kernel",
    "builtin_names",
    "register_kernel",
    "unregister_kernel",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # no ':' or '.', so never mistaken for 'module:function'


@dataclasses.dataclass(frozen=True)
class Reference:
    """A built-in kernel's single-process reference and what its tolerance is derived from.

    Parameters
    ----------
    value : int or float
        The reference result, as the verification report shows it.
    method : str
        One line: how the reference was computed.
    n : int
        Number of elements of the array.
    dtype : numpy.dtype
        The array's dtype (it sets the unit roundoff of the parallel sums).
    scale : float
        The sum the error bounds are proportional to: sum(|x|) for sums and
        means, sum(x**2) for norm2, var and std.
    bound : float
        The reference's own absolute error bound on the sum it is built from
        (the sum, sum(x**2), or M2 = sum((x - mean)**2)); 0 when exact.
    before_sqrt : float
        For results that end in a square root (norm2, std): the reference
        before it (sum(x**2), the variance). NaN otherwise.
    """

    value: Any
    method: str
    n: int
    dtype: np.dtype
    scale: float = 0.0
    bound: float = 0.0
    before_sqrt: float = math.nan


class BuiltinKernel(abc.ABC):
    """Base class of the built-in kernels.

    A subclass sets ``name`` (lower case, no ``:``) and ``description``, and
    implements ``map_chunk``, ``combine``, ``finalize``, ``reference`` and
    ``tolerance``; :func:`register_kernel` makes it a built-in.

    Parameters
    ----------
    accumulate : {"float64", "native"}
        ``float64`` accumulates each chunk in float64; ``native`` uses numpy's
        pairwise sum in the array's dtype. Partial states always combine in
        float64 (or exact python ints).
    engine : {"numpy", "numba"}
        ``numba``: sum and mean of float32/float64 chunks go through the
        compiled loop of :mod:`shmhpc.fastsum` (float64 lanes in both modes).
    """

    name: str
    description: str
    builtin = True

    def __init__(self, accumulate: str = "float64", engine: str = "numpy"):
        self.accumulate = accumulate
        self.engine = engine

    def __reduce__(self) -> tuple[Callable[..., BuiltinKernel], tuple[str, str, str]]:
        # Rebuild from the registry by name on unpickling, so a worker gets exactly what make_kernel gives.
        return (builtin_kernel, (self.name, self.accumulate, self.engine))

    def __repr__(self) -> str:
        return f"<kernel {self.name} accumulate={self.accumulate} engine={self.engine}>"

    def prepare(self) -> None:
        """Called once in each worker before the first chunk: load whatever the engine needs."""
        if self.engine == "numba":
            fastsum.load()

    def map(self, chunk: np.ndarray) -> tuple:
        """Partial state of one chunk (a tuple starting with its element count)."""
        chunk = np.asarray(chunk)
        if chunk.dtype.kind not in "biuf":
            raise SpecError(
                f"kernel: built-in {self.name!r} needs a real-valued array (bool, integer or float);"
                f" got dtype {chunk.dtype}"
            )
        # Overflow and invalid operations show up as inf/NaN in the value, which the
        # verifier reports; a RuntimeWarning from inside a worker would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            return self.map_chunk(chunk)

    @abc.abstractmethod
    def map_chunk(self, chunk: np.ndarray) -> tuple:
        """``map`` for a chunk already checked to be real-valued, with overflow warnings off."""

    @abc.abstractmethod
    def combine(self, a: tuple, b: tuple) -> tuple:
        """Merge two partial states; associative."""

    @abc.abstractmethod
    def finalize(self, state: tuple) -> float | int:
        """The final python number."""

    @abc.abstractmethod
    def reference(self, flat: np.ndarray) -> Reference:
        """The single-process reference over ``flat`` (the whole array, flattened), in its own blocks."""

    @abc.abstractmethod
    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        """Largest |value - reference| a correct parallel result can show.

        ``chunk_sizes`` are the element counts of the mapped chunks: the
        longest one and their number set the depth of our additions.
        """

    @staticmethod
    def chunking(n: int, chunk_sizes: Sequence[int]) -> tuple[int, int]:
        """(longest chunk, number of chunks); partial states are combined one after another."""
        sizes = [int(c) for c in chunk_sizes]
        return (max(sizes) if sizes else n), max(1, len(sizes))


# ---------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, type[BuiltinKernel]] = {}
BUILTINS: Mapping[str, type[BuiltinKernel]] = MappingProxyType(_REGISTRY)
"""Read-only view: built-in kernel name -> class, in registration order."""

_K = TypeVar("_K", bound=type[BuiltinKernel])


def register_kernel(cls: _K) -> _K:
    """Class decorator: make ``cls`` the built-in kernel called ``cls.name``.

    Raises
    ------
    ValueError
        If the name is not lower-case letters, digits and ``_`` (a ``:`` would
        read as a user kernel), or another class has it already.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"built-in kernel name {name!r} must match {_NAME_RE.pattern}")
    if _REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"built-in kernel {name!r} is already registered ({_REGISTRY[name].__qualname__})")
    _REGISTRY[name] = cls
    return cls


def unregister_kernel(name: str) -> type[BuiltinKernel]:
    """Remove the built-in ``name`` and return its class (KeyError if there is none)."""
    return _REGISTRY.pop(name)


def builtin_names() -> tuple[str, ...]:
    """Names of the registered built-in kernels, in registration order."""
    return tuple(_REGISTRY)


def builtin_kernel(name: str, accumulate: str = "float64", engine: str = "numpy") -> BuiltinKernel:
    """An instance of the registered built-in ``name`` (KeyError if there is none)."""
    return _REGISTRY[name](accumulate, engine)


# ---------------------------------------------------------------------------------------------
# shared pieces


def _subblocks(chunk: np.ndarray, accumulate: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat chunk, one reused cache-sized buffer in the work dtype) for the sub-blocked kernels."""
    flat = chunk.reshape(-1)
    work = work_dtype(chunk.dtype, accumulate)
    return flat, np.empty(min(flat.size, SUBBLOCK_ELEMENTS), dtype=work)


def _chan(a: tuple, b: tuple) -> tuple:
    """Merge two ``(n, mean, M2)`` states (Chan, Golub & LeVeque 1979).

    With delta = mean_b - mean_a the merged mean is mean_a + delta*nb/n and
    M2 = M2a + M2b + delta**2 * na*nb/n. Unlike the textbook sum(x**2) -
    n*mean**2 it never subtracts two large, nearly equal numbers, so data with
    a large offset (mean 1e6, std 1) keeps its variance. An empty state is the
    identity.
    """
    na, ma, qa = a
    nb, mb, qb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    return (n, ma + delta * (nb / n), qa + qb + delta * delta * na * (nb / n))


# ---------------------------------------------------------------------------------------------
# sum, mean


class _Summing(BuiltinKernel):
    """Shared by sum and mean: the state ``(n, s)`` and the summation bound."""

    def map_chunk(self, chunk: np.ndarray) -> tuple:
        return (int(chunk.size), self._sum(chunk))

    def _fast(self, dtype: np.dtype) -> bool:
        return self.engine == "numba" and dtype.name in fastsum.FAST_DTYPES

    def _sum(self, chunk: np.ndarray) -> float | int:
        if self._fast(chunk.dtype):
            # Both accumulate modes: float64 lanes cost nothing over float32 ones at memory speed,
            # so the fast path is also the accurate one (see fastsum for its error bound).
            return fastsum.sum_float64(chunk.reshape(-1))
        if self.accumulate == "float64":
            # On float64 data this is numpy's pairwise sum over the whole chunk; on other
            # dtypes numpy casts in buffers of 8192 elements, sums each buffer pairwise and
            # adds the buffer results one after another (see summation.sum_depth for the error bound).
            return float(np.sum(chunk, dtype=np.float64))
        s = np.sum(chunk)  # numpy's default: pairwise in the float dtype, int64/uint64 for integers
        if is_integer(chunk.dtype):
            # Keep integer partials exact; a wrapped int64 sum inside a chunk then shows up
            # as a mismatch against the verifier's exact integer reference.
            return int(s)
        return float(s)

    def combine(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def _our_bound(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        """gamma_k * sum|x| for our sum: numpy's depth on the longest chunk, one step per chunk merged."""
        longest, nchunks = self.chunking(ref.n, chunk_sizes)
        if self._fast(ref.dtype):
            return gamma(fastsum.sum_depth(longest) + nchunks, U64) * ref.scale
        depth = sum_depth(longest, ref.dtype, self.accumulate)
        if depth is None:
            return 0.0
        k, u = depth
        return gamma(k + nchunks, u) * ref.scale


@register_kernel
class Sum(_Summing):
    """Sum of all elements: a python int for a ``native`` integer sum (exact), else a float.

    Tolerance: our summation bound plus the reference's own bound plus rounding the
    reference to a python float; 0 for a ``native`` integer sum against the exact one.
    """

    name = "sum"
    description = "sum of all elements"

    def finalize(self, state: tuple) -> float | int:
        s = state[1]
        return s if isinstance(s, int) else float(s)

    def reference(self, flat: np.ndarray) -> Reference:
        s = SumReference(flat)
        value = s.value if s.exact_int else s.as_float()
        return Reference(value, s.method, flat.size, flat.dtype, scale=s.sum_abs, bound=s.bound)

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        rounding = 0.0 if is_integer(ref.dtype) else U64 * abs(ref.value)  # the reference rounded to a float
        return self._our_bound(ref, chunk_sizes) + ref.bound + rounding


@register_kernel
class Mean(_Summing):
    """Arithmetic mean of all elements (NaN for an empty array).

    Tolerance: the sum's bounds (ours and the reference's) divided by ``n``, plus
    three roundings.
    """

    name = "mean"
    description = "arithmetic mean of all elements"

    def finalize(self, state: tuple) -> float:
        n = state[0]
        # int / int is correctly rounded in python, so an exact integer sum gives the best mean
        return state[1] / n if n else math.nan

    def reference(self, flat: np.ndarray) -> Reference:
        if flat.size == 0:
            return Reference(math.nan, "empty array", 0, flat.dtype)
        s = SumReference(flat)
        return Reference(s.mean(), s.method + ", divided by n", flat.size, flat.dtype, scale=s.sum_abs, bound=s.bound)

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        if ref.n == 0:
            return 0.0
        # both means divide by n and round: our sum's bound and the reference's scale by 1/n,
        # plus up to three roundings (reference sum, reference division, our division)
        return (self._our_bound(ref, chunk_sizes) + ref.bound) / ref.n + 3 * U64 * abs(ref.value)


# ---------------------------------------------------------------------------------------------
# min, max


class _Extremum(BuiltinKernel):
    """Shared by min and max: the state ``(n, v)``; exact, so the tolerance is 0."""

    @abc.abstractmethod
    def _reduce(self, x: np.ndarray) -> Any:
        """np.min or np.max of ``x``."""

    @abc.abstractmethod
    def _better(self, new: Any, old: Any) -> bool:
        """Whether ``new`` replaces ``old`` (``<`` for min, ``>`` for max, as inside builtins min/max)."""

    def map_chunk(self, chunk: np.ndarray) -> tuple:
        if chunk.size == 0:
            return (0, None)
        return (int(chunk.size), self._reduce(chunk).item())  # exact: python int or float

    def combine(self, a: tuple, b: tuple) -> tuple:
        """NaN-propagating min or max; ``None`` (empty chunk) is the identity."""
        va, vb = a[1], b[1]
        if va is None:
            v = vb
        elif vb is None or va != va:  # NaN wins, as in np.min / np.max
            v = va
        elif vb != vb:
            v = vb
        else:
            v = vb if self._better(vb, va) else va
        return (a[0] + b[0], v)

    def finalize(self, state: tuple) -> float | int:
        if state[0] == 0:
            raise RunError(f"kernel {self.name!r}: no elements to take the {self.name} of")
        return state[1]

    def reference(self, flat: np.ndarray) -> Reference:
        if flat.size == 0:
            return Reference(math.nan, "empty array", 0, flat.dtype)
        value = self._reduce(flat).item()
        method = f"np.{self.name} over the whole array (exact: the result is one of the elements)"
        return Reference(value, method, flat.size, flat.dtype)

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        return 0.0  # the result is one of the elements: it must match exactly


@register_kernel
class Min(_Extremum):
    """Smallest element; NaN if any element is NaN. Must match the reference exactly."""

    name = "min"
    description = "smallest element (NaN if any element is NaN)"

    def _reduce(self, x: np.ndarray) -> Any:
        return np.min(x)

    def _better(self, new: Any, old: Any) -> bool:
        return bool(new < old)


@register_kernel
class Max(_Extremum):
    """Largest element; NaN if any element is NaN. Must match the reference exactly."""

    name = "max"
    description = "largest element (NaN if any element is NaN)"

    def _reduce(self, x: np.ndarray) -> Any:
        return np.max(x)

    def _better(self, new: Any, old: Any) -> bool:
        return bool(new > old)


# ---------------------------------------------------------------------------------------------
# var, std


class _Moments(BuiltinKernel):
    """Shared by var and std: the state ``(n, mean, M2)``, merged with Chan's update."""

    def map_chunk(self, chunk: np.ndarray) -> tuple:
        """``(n, mean, M2)`` by a two-pass pass over each sub-block, merged with Chan's update."""
        if chunk.size == 0:
            return (0, 0.0, 0.0)
        flat, buf = _subblocks(chunk, self.accumulate)
        work = buf.dtype
        state: tuple = (0, 0.0, 0.0)
        for start in range(0, flat.size, SUBBLOCK_ELEMENTS):
            block = flat[start : start + SUBBLOCK_ELEMENTS]
            k = block.size
            d = buf[:k]
            np.copyto(d, block, casting="unsafe")  # exact for float32/float16/int32 -> float64
            # pairwise sum in the work dtype; divide in float64 (a float16 cannot even hold k)
            # and round the mean back to the work dtype for the subtraction
            m = work.type(float(d.sum()) / k)
            d -= m
            d *= d
            state = _chan(state, (k, float(m), float(d.sum())))
        return state

    def combine(self, a: tuple, b: tuple) -> tuple:
        return _chan(a, b)

    def _variance(self, state: tuple) -> float:
        n = state[0]
        return state[2] / n if n else math.nan

    def reference(self, flat: np.ndarray) -> Reference:
        """Two-pass reference of the variance: the mean first, then sum((x - mean)**2)."""
        n = flat.size
        if n == 0:
            return Reference(math.nan, "empty array", 0, flat.dtype)
        s = SumReference(flat)
        mean = s.mean()
        m2, nblocks = m2_reference(flat, mean)
        sumsq = m2 + n * mean * mean  # sum(x**2) = M2 + n*mean**2, no third pass needed
        k_ref = clog2(min(n, REF_BLOCK)) + PAIRWISE_EXTRA + nblocks + 4
        bound = 4 * gamma(k_ref, unit_roundoff(np.longdouble)) * sumsq  # the reference's own two-pass bound
        method = f"two-pass: mean from {s.method}, then sum((x-mean)**2) in np.longdouble over {nblocks} blocks"
        return Reference(m2 / n, method, n, flat.dtype, scale=sumsq, bound=bound)

    def _variance_tolerance(self, ref: Reference, chunk_sizes: Sequence[int], var_ref: float) -> float:
        """Tolerance on the variance.

        Within a sub-block the two-pass M2 = sum((x - m)**2) with a computed mean
        m = mean + e, |e| <= gamma*sum|x|/len, is sum((x - mean)**2) + len*e**2,
        and len*e**2 <= gamma**2 * sum(x**2) by Cauchy-Schwarz; squaring and
        summing the differences adds gamma*M2 <= gamma*sum(x**2). Chan's merge
        adds delta**2*na*nb/n with delta computed from means carrying the same
        kind of error, again O(gamma*sum(x**2)). Collecting terms,
        |M2 - M2_exact| <= c*gamma*sum(x**2) with a small c; we take c = 4,
        i.e. tol_var = 4*gamma*sum(x**2)/n; the reference's bound is the same
        with its longdouble depth.
        """
        longest, nchunks = self.chunking(ref.n, chunk_sizes)
        k, u = block_depth(longest, ref.dtype, self.accumulate)
        ours = 4 * gamma(k + nchunks, u) * ref.scale / ref.n
        return ours + ref.bound / ref.n + 2 * U64 * abs(var_ref)


@register_kernel
class Var(_Moments):
    """Population variance (``ddof=0``, like ``np.var``); NaN for an empty array.

    Tolerance: ``4 * gamma_k * sum(x**2) / n`` for ours and the reference's two-pass
    sums (see ``_variance_tolerance``), plus two roundings.
    """

    name = "var"
    description = "population variance (ddof=0) of all elements"

    def finalize(self, state: tuple) -> float:
        return self._variance(state)

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        if ref.n == 0:
            return 0.0
        return self._variance_tolerance(ref, chunk_sizes, ref.value)


@register_kernel
class Std(_Moments):
    """Population standard deviation (``ddof=0``, like ``np.std``); NaN for an empty array.

    Tolerance: the variance's, carried through the square root.
    """

    name = "std"
    description = "population standard deviation (ddof=0) of all elements"

    def finalize(self, state: tuple) -> float:
        return math.sqrt(self._variance(state))

    def reference(self, flat: np.ndarray) -> Reference:
        var = super().reference(flat)
        if var.n == 0:
            return var
        std = math.sqrt(var.value) if var.value >= 0 else math.nan
        return dataclasses.replace(var, value=std, method=var.method + ", then sqrt", before_sqrt=var.value)

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        if ref.n == 0:
            return 0.0
        tol_var = self._variance_tolerance(ref, chunk_sizes, ref.before_sqrt)
        return sqrt_tolerance(tol_var, ref.before_sqrt) + 2 * U64 * ref.value


# ---------------------------------------------------------------------------------------------
# norm2


@register_kernel
class Norm2(BuiltinKernel):
    """Euclidean norm sqrt(sum(x**2)) of all elements; state ``(n, sumsq)``.

    Tolerance: the summation bound on sum(x**2) (sub-blocked depth), carried through
    the square root.
    """

    name = "norm2"
    description = "Euclidean norm sqrt(sum(x**2)) of all elements"

    def map_chunk(self, chunk: np.ndarray) -> tuple:
        """sum(x**2) over sub-blocks: square into a cache-sized buffer, pairwise-sum it."""
        if chunk.size == 0:
            return (0, 0.0)
        flat, buf = _subblocks(chunk, self.accumulate)
        q = 0.0
        for start in range(0, flat.size, SUBBLOCK_ELEMENTS):
            block = flat[start : start + SUBBLOCK_ELEMENTS]
            d = buf[: block.size]
            np.multiply(block, block, out=d, dtype=buf.dtype, casting="unsafe")
            q += float(d.sum())  # sub-block results are added in float64, one after another
        return (int(flat.size), q)

    def combine(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def finalize(self, state: tuple) -> float:
        return math.sqrt(state[1])

    def reference(self, flat: np.ndarray) -> Reference:
        q, q_bound, method = sumsq_reference(flat)
        ref = math.sqrt(q)
        return Reference(ref, method + ", then sqrt", flat.size, flat.dtype, scale=q, bound=q_bound, before_sqrt=q)

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        longest, nchunks = self.chunking(ref.n, chunk_sizes)
        k, u = block_depth(longest, ref.dtype, self.accumulate)
        q = ref.before_sqrt
        tol_q = gamma(k + nchunks, u) * ref.scale + ref.bound + U64 * q
        return sqrt_tolerance(tol_q, q) + 2 * U64 * ref.value
