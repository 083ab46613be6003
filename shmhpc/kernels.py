"""Reductions as map / combine / finalize.

A kernel turns one chunk of the shared array into a small, picklable *partial
state* (``map``, run in a worker), merges two states (``combine``, associative,
run in the launcher as the states come back through the pipes) and turns the
final state into a JSON-able value (``finalize``).

Built-ins: ``sum``, ``mean``, ``min``, ``max``, ``var``, ``std`` (population,
``ddof=0`` like ``np.var``) and ``norm2`` (Euclidean norm of all elements).
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

Anything else is a user kernel ``"package.module:function"``; see
:func:`make_kernel`. This module does no I/O and starts no processes.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import re
import sys
from typing import Any, Protocol

import numpy as np

from .errors import RunError, SpecError

__all__ = [
    "ACCUMULATE",
    "BUILTIN_KERNELS",
    "Kernel",
    "combine_all",
    "describe_kernel",
    "make_kernel",
    "state_count",
]

BUILTIN_KERNELS: tuple[str, ...] = ("sum", "mean", "min", "max", "var", "std", "norm2")
ACCUMULATE = ("float64", "native")

# var/std/norm2 need elementwise temporaries (x - mean, x*x). Working on
# sub-blocks of 2**18 elements (2 MiB in float64) keeps the one reused buffer in
# L2/L3 instead of streaming a second 1 GB array through DRAM.
SUBBLOCK_ELEMENTS = 1 << 18

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR_RE = _MODULE_RE  # a dotted attribute path such as ``Class.method`` is walked with getattr

_DESCRIPTIONS = {
    "sum": "sum of all elements",
    "mean": "arithmetic mean of all elements",
    "min": "smallest element (NaN if any element is NaN)",
    "max": "largest element (NaN if any element is NaN)",
    "var": "population variance (ddof=0) of all elements",
    "std": "population standard deviation (ddof=0) of all elements",
    "norm2": "Euclidean norm sqrt(sum(x**2)) of all elements",
}


class Kernel(Protocol):
    """What every kernel object offers to the runner and the workers."""

    name: str
    builtin: bool

    def map(self, chunk: np.ndarray) -> Any:
        """Partial state of one chunk: small and picklable (it is sent through a pipe)."""
        ...

    def combine(self, a: Any, b: Any) -> Any:
        """Merge two partial states; associative."""
        ...

    def finalize(self, state: Any) -> float | list | int:
        """The JSON-able final value (python number or nested list)."""
        ...


# ---------------------------------------------------------------------------------------------
# built-ins


def _check_real(name: str, chunk: np.ndarray) -> None:
    if chunk.dtype.kind not in "biuf":
        raise SpecError(
            f"kernel: built-in {name!r} needs a real-valued array (bool, integer or float); got dtype {chunk.dtype}"
        )


def _is_integer(dtype: np.dtype) -> bool:
    return dtype.kind in "biu"


def _work_dtype(dtype: np.dtype, accumulate: str) -> np.dtype:
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


def _pick(op: str, a: Any, b: Any) -> Any:
    """NaN-propagating min or max of two scalars; ``None`` (empty chunk) is the identity."""
    if a is None:
        return b
    if b is None:
        return a
    if a != a:  # NaN wins, as in np.min / np.max
        return a
    if b != b:
        return b
    return min(a, b) if op == "min" else max(a, b)


class _Builtin:
    """One built-in reduction; ``accumulate`` picks the dtype sums run in."""

    builtin = True

    def __init__(self, name: str, accumulate: str):
        self.name = name
        self.accumulate = accumulate

    def __reduce__(self):
        # Rebuild from the spec on unpickling, so a worker gets exactly what make_kernel gives.
        return (make_kernel, (self.name, self.accumulate))

    def __repr__(self) -> str:
        return f"<kernel {self.name} accumulate={self.accumulate}>"

    # -- map ---------------------------------------------------------------------------------
    def map(self, chunk: np.ndarray) -> tuple:
        chunk = np.asarray(chunk)
        _check_real(self.name, chunk)
        n = int(chunk.size)
        # Overflow and invalid operations show up as inf/NaN in the value, which the
        # verifier reports; a RuntimeWarning from inside a worker would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            if self.name in ("sum", "mean"):
                return (n, self._sum(chunk))
            if self.name in ("min", "max"):
                if n == 0:
                    return (0, None)
                v = np.min(chunk) if self.name == "min" else np.max(chunk)
                return (n, v.item())  # exact: python int for integers, float for floats
            if self.name in ("var", "std"):
                return self._moments(chunk)
            return (n, self._sumsq(chunk))

    def _sum(self, chunk: np.ndarray) -> float | int:
        if self.accumulate == "float64":
            # On float64 data this is numpy's pairwise sum over the whole chunk; on other
            # dtypes numpy casts in buffers of 8192 elements, sums each buffer pairwise and
            # adds the buffer results one after another (see verify.py for the error bound).
            return float(np.sum(chunk, dtype=np.float64))
        s = np.sum(chunk)  # numpy's default: pairwise in the float dtype, int64/uint64 for integers
        if _is_integer(chunk.dtype):
            # Keep integer partials exact; a wrapped int64 sum inside a chunk then shows up
            # as a mismatch against the verifier's exact integer reference.
            return int(s)
        return float(s)

    def _moments(self, chunk: np.ndarray) -> tuple:
        """``(n, mean, M2)`` by a two-pass pass over each sub-block, merged with Chan's update."""
        flat = chunk.reshape(-1)
        total = flat.size
        if total == 0:
            return (0, 0.0, 0.0)
        work = _work_dtype(chunk.dtype, self.accumulate)
        buf = np.empty(min(total, SUBBLOCK_ELEMENTS), dtype=work)  # one reused, cache-sized temporary
        state: tuple = (0, 0.0, 0.0)
        for start in range(0, total, SUBBLOCK_ELEMENTS):
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

    def _sumsq(self, chunk: np.ndarray) -> float:
        """sum(x**2) over sub-blocks: square into a cache-sized buffer, pairwise-sum it."""
        flat = chunk.reshape(-1)
        total = flat.size
        if total == 0:
            return 0.0
        work = _work_dtype(chunk.dtype, self.accumulate)
        buf = np.empty(min(total, SUBBLOCK_ELEMENTS), dtype=work)
        q = 0.0
        for start in range(0, total, SUBBLOCK_ELEMENTS):
            block = flat[start : start + SUBBLOCK_ELEMENTS]
            d = buf[: block.size]
            np.multiply(block, block, out=d, dtype=work, casting="unsafe")
            q += float(d.sum())  # sub-block results are added in float64, one after another
        return q

    # -- combine / finalize ----------------------------------------------------------------------
    def combine(self, a: tuple, b: tuple) -> tuple:
        if self.name in ("var", "std"):
            return _chan(a, b)
        if self.name in ("min", "max"):
            return (a[0] + b[0], _pick(self.name, a[1], b[1]))
        return (a[0] + b[0], a[1] + b[1])

    def finalize(self, state: tuple) -> float | int:
        n = state[0]
        if self.name == "sum":
            s = state[1]
            return s if isinstance(s, int) else float(s)
        if self.name == "mean":
            # int / int is correctly rounded in python, so an exact integer sum gives the best mean
            return state[1] / n if n else math.nan
        if self.name in ("min", "max"):
            if n == 0:
                raise RunError(f"kernel {self.name!r}: no elements to take the {self.name} of")
            return state[1]
        if self.name in ("var", "std"):
            if n == 0:
                return math.nan
            var = state[2] / n
            return var if self.name == "var" else math.sqrt(var)
        return math.sqrt(state[1])


# ---------------------------------------------------------------------------------------------
# user kernels


def _to_jsonable(x: Any, where: str) -> float | int | list:
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int | float):
        return x
    if isinstance(x, np.ndarray | np.generic):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise RunError(f"kernel {where!r}: finalize gave dtype {arr.dtype}; a number or a real array is needed")
        return arr.tolist()
    if isinstance(x, list | tuple):
        return [_to_jsonable(v, where) for v in x]
    raise RunError(f"kernel {where!r}: finalize gave {type(x).__name__}; a number or a list of numbers is needed")


def _normalize_partial(x: Any, where: str) -> Any:
    """A plain function's result as a partial that combines exactly (int) or in float64."""
    if isinstance(x, bool | np.bool_):
        return int(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x)
    if isinstance(x, np.ndarray | list | tuple):
        arr = np.asarray(x)
        if arr.dtype.kind in "biu":
            return arr.astype(np.int64)
        if arr.dtype.kind == "f":
            return arr.astype(np.float64)
        raise RunError(f"kernel {where!r}: returned an array of dtype {arr.dtype}; a real number or array is needed")
    raise RunError(f"kernel {where!r}: returned {type(x).__name__}; a number or an ndarray is needed")


def _tolerance_attr(obj: Any, attr: str, default: float, spec: str) -> float:
    v = getattr(obj, attr, None)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise SpecError(f"kernel: {spec!r} has {attr}={v!r}; {attr} must be a non-negative number")
    v = float(v)
    if not (v >= 0 and math.isfinite(v)):
        raise SpecError(f"kernel: {spec!r} has {attr}={v!r}; {attr} must be a non-negative number")
    return v


class _UserKernel:
    """Adapter that gives a user kernel the :class:`Kernel` interface."""

    builtin = False
    accumulate = "user"

    def __init__(self, name: str, target: Any, search_path: list[str], rtol: float, atol: float):
        self.name = name
        self._target = target
        self._search_path = search_path
        self.rtol = rtol
        self.atol = atol

    def __reduce__(self):
        # Rebuild by importing again in the receiving process rather than pickling the
        # user's function or object (whose module may not be on that process's sys.path).
        return (make_kernel, (self.name, "float64", self._search_path))

    def __repr__(self) -> str:
        return f"<user kernel {self.name}>"

    def map(self, chunk: np.ndarray) -> Any:
        raise NotImplementedError

    def combine(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def finalize(self, state: Any) -> float | int | list:
        raise NotImplementedError


class _FunctionKernel(_UserKernel):
    """A plain function of a chunk; partial results are added together."""

    style = "function"

    def map(self, chunk: np.ndarray) -> Any:
        return _normalize_partial(self._target(chunk), self.name)

    def combine(self, a: Any, b: Any) -> Any:
        try:
            return a + b
        except (TypeError, ValueError) as exc:
            raise RunError(f"kernel {self.name!r}: cannot add partial results: {type(exc).__name__}: {exc}") from None

    def finalize(self, state: Any) -> float | int | list:
        return _to_jsonable(state, self.name)


class _ObjectKernel(_UserKernel):
    """An object with its own ``map``, ``combine`` and ``finalize``."""

    style = "object"

    def map(self, chunk: np.ndarray) -> Any:
        return self._target.map(chunk)

    def combine(self, a: Any, b: Any) -> Any:
        return self._target.combine(a, b)

    def finalize(self, state: Any) -> float | int | list:
        return _to_jsonable(self._target.finalize(state), self.name)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _import_module(module: str, spec: str, search_path: list[str]) -> Any:
    """Import exactly ``module``, with ``search_path`` in front of sys.path for the import only."""
    added = [d for d in search_path if d not in sys.path]
    sys.path[:0] = added
    try:
        importlib.invalidate_caches()  # a module file written after start-up must be found
        return importlib.import_module(module)
    except (Exception, SystemExit) as exc:  # anything the user's module raises while it runs
        raise SpecError(f"kernel: cannot import module {module!r} ({spec!r}): {_one_line(exc)}") from None
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def _unknown(spec: str) -> SpecError:
    allowed = ", ".join(BUILTIN_KERNELS)
    msg = f"kernel: {spec!r} is not a built-in kernel ({allowed}) nor a 'module:function' path"
    close = difflib.get_close_matches(spec.lower(), BUILTIN_KERNELS, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return SpecError(msg)


def _load_user(spec: str, search_path: list[str]) -> _UserKernel:
    module_name, _, attr_path = spec.partition(":")
    module = _import_module(module_name, spec, search_path)
    target: Any = module
    parts = attr_path.split(".")
    for i, part in enumerate(parts):
        if not hasattr(target, part):
            owner = f"module {module_name!r}" if i == 0 else repr(f"{module_name}:{'.'.join(parts[:i])}")
            public = [a for a in dir(target) if not a.startswith("_")]
            close = difflib.get_close_matches(part, public, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"kernel: {owner} has no attribute {part!r}{hint}")
        target = getattr(target, part)

    methods = ("map", "combine", "finalize")
    present = [m for m in methods if callable(getattr(target, m, None))]
    if present:
        missing = [m for m in methods if m not in present]
        if missing:
            raise SpecError(f"kernel: {spec!r} has {', '.join(present)} but lacks {', '.join(missing)}")
        if isinstance(target, type):
            # A class is instantiated once, with no arguments; an instance is used as it is.
            try:
                target = target()
            except Exception as exc:
                raise SpecError(
                    f"kernel: cannot instantiate class {spec!r} with no arguments: {_one_line(exc)}"
                ) from None
        cls: type[_UserKernel] = _ObjectKernel
    elif isinstance(target, type):
        raise SpecError(f"kernel: {spec!r} is a class without map/combine/finalize methods")
    elif callable(target):
        cls = _FunctionKernel
    else:
        raise SpecError(f"kernel: {spec!r} is not callable and has no map/combine/finalize")
    rtol = _tolerance_attr(target, "rtol", 1e-6, spec)
    atol = _tolerance_attr(target, "atol", 0.0, spec)
    return cls(spec, target, search_path, rtol, atol)


def make_kernel(spec: str, accumulate: str = "float64", search_path: list[str] | None = None) -> Kernel:
    """Build a kernel from its spec.

    Parameters
    ----------
    spec : str
        A built-in name (``sum``, ``mean``, ``min``, ``max``, ``var``, ``std``,
        ``norm2``) or a user kernel ``"package.module:attribute"``. The
        attribute may be

        * a plain function ``f(chunk) -> number | ndarray``; partial results
          are added (``a + b``: python ints stay exact, floats combine in
          float64) and ``finalize`` gives a python number or nested list;
        * an object with ``map``, ``combine`` and ``finalize`` methods; a
          class is instantiated once with no arguments, an instance is used
          as it is. ``finalize`` may return numpy values; they are converted.

        Optional attributes ``rtol`` and ``atol`` (non-negative floats) on the
        function, class or instance set the verification tolerance
        (defaults 1e-6 and 0).
    accumulate : {"float64", "native"}
        For built-ins: ``float64`` accumulates each chunk in float64;
        ``native`` uses numpy's own pairwise sum in the array's dtype (integer
        arrays: numpy's default int64/uint64 accumulation), the fastest.
        Partial states always combine in float64 (or exact python ints).
        Ignored by user kernels.
    search_path : list of str, optional
        Directories put in front of ``sys.path`` (those not already there)
        while the user's module is imported, then removed again; a job's own
        directory goes here so that ``example_kernels:f`` resolves.

    Returns
    -------
    Kernel
        An object with ``name``, ``builtin``, ``map``, ``combine`` and
        ``finalize``; user kernels also carry ``rtol`` and ``atol``. Kernels
        pickle by spec: unpickling calls ``make_kernel`` again.

    Raises
    ------
    SpecError
        One line naming ``kernel``, the value and what is allowed: an unknown
        name, a module that cannot be imported (including any exception the
        module raises while it is imported), a missing attribute, an attribute
        that is neither callable nor a map/combine/finalize object, a bad
        ``accumulate``.
    """
    if accumulate not in ACCUMULATE:
        raise SpecError(f"accumulate: {accumulate!r} is not one of {', '.join(ACCUMULATE)}")
    if not isinstance(spec, str):
        raise SpecError(f"kernel: {spec!r} is not a string")
    if spec in BUILTIN_KERNELS:
        return _Builtin(spec, accumulate)
    module_name, colon, attr_path = spec.partition(":")
    if not colon or not _MODULE_RE.match(module_name) or not _ATTR_RE.match(attr_path):
        raise _unknown(spec)
    dirs = [os.path.abspath(os.fspath(d)) for d in (search_path or [])]
    return _load_user(spec, dirs)


def combine_all(kernel: Kernel, states: list) -> Any:
    """Left-fold ``states`` with ``kernel.combine`` in the order given.

    Parameters
    ----------
    kernel : Kernel
    states : list
        Partial states, e.g. one per chunk in chunk order.

    Returns
    -------
    Any
        The combined state; pass it to ``kernel.finalize``.

    Raises
    ------
    RunError
        If ``states`` is empty (nothing was reduced).
    """
    if not states:
        raise RunError(f"kernel {kernel.name!r}: no partial states to combine")
    acc = states[0]
    for s in states[1:]:
        acc = kernel.combine(acc, s)
    return acc


def state_count(kernel: Kernel, state: Any) -> int | None:
    """Element count carried by a built-in state (``state[0]``); ``None`` for user kernels."""
    if getattr(kernel, "builtin", False):
        return int(state[0])
    return None


def describe_kernel(spec: str | Kernel) -> str:
    """A short human description of a kernel spec or kernel object.

    Does not import user modules when given a spec string.
    """
    if not isinstance(spec, str):
        if getattr(spec, "builtin", False):
            return f"{_DESCRIPTIONS[spec.name]}, accumulated in {getattr(spec, 'accumulate', 'float64')}"
        style = getattr(spec, "style", "function")
        how = "partial results added" if style == "function" else "its own map/combine/finalize"
        return f"user kernel {spec.name} ({how})"
    if spec in _DESCRIPTIONS:
        return _DESCRIPTIONS[spec]
    return f"user kernel {spec}"
