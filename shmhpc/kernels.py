"""Reductions as map / combine / finalize.

A kernel turns one chunk of the shared array into a small, picklable *partial
state* (``map``, run in a worker), merges two states (``combine``, associative,
run in the launcher as the states come back through the pipes) and turns the
final state into a JSON-able value (``finalize``).

Built-in kernels are one class each in :mod:`shmhpc.reductions`, listed by
its registry (:data:`BUILTINS`, :func:`builtin_names`); their states start
with the element count ``n`` so the verifier can check that no element was
skipped or reduced twice.

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
from .reductions import (
    BUILTINS,
    BuiltinKernel,
    Reference,
    builtin_kernel,
    builtin_names,
    register_kernel,
    unregister_kernel,
)
from .summation import SUBBLOCK_ELEMENTS

__all__ = [
    "ACCUMULATE",
    "BUILTINS",
    "SUBBLOCK_ELEMENTS",
    "BuiltinKernel",
    "Kernel",
    "Reference",
    "builtin_names",
    "combine_all",
    "describe_kernel",
    "kernel_from_object",
    "make_kernel",
    "register_kernel",
    "state_count",
    "unregister_kernel",
]

ACCUMULATE = ("float64", "native")

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR_RE = _MODULE_RE  # a dotted attribute path such as ``Class.method`` is walked with getattr


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
    names = builtin_names()
    msg = f"kernel: {spec!r} is not a built-in kernel ({', '.join(names)}) nor a 'module:function' path"
    close = difflib.get_close_matches(spec.lower(), names, n=1)
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
    return _wrap(target, spec, search_path)


def _wrap(target: Any, spec: str, search_path: list[str]) -> _UserKernel:
    """A user kernel around ``target``: a map/combine/finalize object (a class is instantiated) or a function."""
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


def make_kernel(
    spec: str, accumulate: str = "float64", search_path: list[str] | None = None, engine: str = "numpy"
) -> Kernel:
    """Build a kernel from its spec.

    Parameters
    ----------
    spec : str
        A built-in name (one of :func:`builtin_names`) or a user kernel
        ``"package.module:attribute"``. The attribute may be

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
    engine : {"numpy", "numba"}
        For built-ins: what sums the chunks (:mod:`shmhpc.fastsum`); ``numba``
        applies to sum and mean over float32/float64 data. Ignored by user kernels.

    Returns
    -------
    Kernel
        An object with ``name``, ``builtin``, ``map``, ``combine`` and
        ``finalize``: for a built-in, an instance of its registered
        :class:`BuiltinKernel` subclass (which also has ``reference`` and
        ``tolerance``); user kernels carry ``rtol`` and ``atol``. Kernels
        pickle by spec: unpickling builds them from the name again.

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
    if spec in BUILTINS:
        return builtin_kernel(spec, accumulate, engine)
    module_name, colon, attr_path = spec.partition(":")
    if not colon or not _MODULE_RE.match(module_name) or not _ATTR_RE.match(attr_path):
        raise _unknown(spec)
    dirs = [os.path.abspath(os.fspath(d)) for d in (search_path or [])]
    return _load_user(spec, dirs)


class _ByValue:
    """Mixin: a kernel built from a Python object (``kernel_from_object``) pickles the object by value
    (cloudpickle), so a function or class defined in a notebook or ``__main__`` reaches any worker."""

    _target: Any
    name: str

    def __reduce__(self):
        import cloudpickle

        return (_kernel_from_bytes, (cloudpickle.dumps(self._target), self.name))


class _FunctionByValue(_ByValue, _FunctionKernel):
    pass


class _ObjectByValue(_ByValue, _ObjectKernel):
    pass


def _kernel_from_bytes(payload: bytes, name: str) -> Kernel:
    import pickle

    # the bytes come from our own launcher, over the worker's private pipe (which multiprocessing unpickles anyway)
    return kernel_from_object(pickle.loads(payload), name)  # noqa: S301


def kernel_from_object(obj: Any, name: str | None = None) -> Kernel:
    """A kernel from a Python object: a function ``f(chunk) -> number | ndarray`` (partial results added) or
    an object or class with ``map``/``combine``/``finalize`` — the same rules as a ``"module:function"`` kernel,
    for one defined where it is used (a notebook cell, ``__main__``). Pickled by value. Raises ``SpecError``."""
    label = name or f"python:{getattr(obj, '__qualname__', None) or type(obj).__name__}"
    kernel = _wrap(obj, label, [])
    by_value = _ObjectByValue if isinstance(kernel, _ObjectKernel) else _FunctionByValue
    return by_value(kernel.name, kernel._target, [], kernel.rtol, kernel.atol)


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
    if isinstance(spec, BuiltinKernel):
        return f"{spec.description}, accumulated in {spec.accumulate}"
    if not isinstance(spec, str):
        style = getattr(spec, "style", "function")
        how = "partial results added" if style == "function" else "its own map/combine/finalize"
        return f"user kernel {spec.name} ({how})"
    if spec in BUILTINS:
        return BUILTINS[spec].description
    return f"user kernel {spec}"
