"""Built-in kernels as classes: the registry, per-kernel reference and tolerance, adding a kernel in one place."""

from __future__ import annotations

import ast
import math
import multiprocessing
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from shmhpc import reductions
from shmhpc.errors import RunError, SpecError
from shmhpc.kernels import (
    ACCUMULATE,
    BUILTINS,
    BuiltinKernel,
    Reference,
    builtin_names,
    combine_all,
    describe_kernel,
    make_kernel,
    register_kernel,
    state_count,
    unregister_kernel,
)
from shmhpc.spec import JobSpec
from shmhpc.summation import PAIRWISE_EXTRA, U64, abs_sum, clog2, gamma
from shmhpc.verify import verify

ROOT = Path(__file__).resolve().parent.parent
_rng = np.random.default_rng(515)
DATA = _rng.standard_normal(20_001) * 4 - 1


def reduce(kernel, a: np.ndarray, nchunks: int):
    chunks = np.array_split(a, nchunks)
    state = combine_all(kernel, [kernel.map(c) for c in chunks])
    return kernel.finalize(state), state, [c.size for c in chunks]


# ---------------------------------------------------------------------------------------------
# the registry is the one list


def test_registry_lists_the_builtins_in_order():
    assert builtin_names() == ("sum", "mean", "min", "max", "var", "std", "norm2")
    assert tuple(BUILTINS) == builtin_names()
    for name, cls in BUILTINS.items():
        assert issubclass(cls, BuiltinKernel)
        assert cls.name == name
        assert cls.description
        assert cls.__doc__  # every built-in documents its tolerance rule
        kernel = make_kernel(name, "native")
        assert type(kernel) is cls
        assert (kernel.name, kernel.accumulate, kernel.builtin) == (name, "native", True)
        assert describe_kernel(name) == cls.description
        assert describe_kernel(kernel) == f"{cls.description}, accumulated in native"
    with pytest.raises(TypeError):
        BUILTINS["x"] = BUILTINS["sum"]  # type: ignore[index]  # a read-only view: register_kernel is the way in


def test_spec_field_description_lists_exactly_the_registry():
    # spec.py stays free of numpy, so it spells the names out; this keeps the literal honest
    choices = JobSpec.model_fields["kernel"].description.split(" | ")
    assert tuple(choices[:-1]) == builtin_names()
    assert choices[-1] == "package.module:function"
    imported = set()
    for node in ast.walk(ast.parse((ROOT / "shmhpc" / "spec.py").read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not imported & {"numpy", "kernels", "reductions", "summation"}


def test_register_kernel_refuses_bad_and_taken_names():
    class Colon(BuiltinKernel):
        name = "mod:f"

    class Taken(BuiltinKernel):
        name = "sum"

    with pytest.raises(ValueError, match="must match"):
        register_kernel(Colon)
    with pytest.raises(ValueError, match=r"'sum' is already registered \(Sum\)"):
        register_kernel(Taken)
    assert register_kernel(BUILTINS["sum"]) is BUILTINS["sum"]  # the same class again is a no-op
    assert builtin_names()[0] == "sum"


def test_a_kernel_class_must_implement_everything():
    class Partial(BuiltinKernel):
        name = "partial"
        description = "no tolerance"

        def map_chunk(self, chunk):
            return (chunk.size,)

        def combine(self, a, b):
            return (a[0] + b[0],)

        def finalize(self, state):
            return state[0]

        def reference(self, flat):
            return Reference(flat.size, "len", flat.size, flat.dtype)

    with pytest.raises(TypeError, match="tolerance"):
        Partial()


# ---------------------------------------------------------------------------------------------
# reference and tolerance are methods of each kernel


@pytest.mark.parametrize("acc", ACCUMULATE)
@pytest.mark.parametrize("name", builtin_names())
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_reference_and_tolerance_are_what_verify_reports(name, acc, dtype):
    a = (DATA * 100).astype(dtype)
    kernel = make_kernel(name, acc)
    value, state, sizes = reduce(kernel, a, 5)
    ref = kernel.reference(a.reshape(-1))
    assert isinstance(ref, Reference)
    assert (ref.n, ref.dtype) == (a.size, a.dtype)
    tol = kernel.tolerance(ref, sizes)
    report = verify(kernel, value, a, accumulate=acc, chunk_sizes=sizes, count=state_count(kernel, state))
    assert report["verified"], report
    assert (report["reference"], report["tolerance"], report["method"]) == (ref.value, tol, ref.method)
    assert abs(value - ref.value) <= tol


def test_exact_kernels_have_zero_tolerance():
    ints = (DATA * 1000).astype(np.int64)
    for name in ("min", "max"):
        k = make_kernel(name)
        ref = k.reference(DATA)
        assert ref.value == getattr(np, name)(DATA)
        assert k.tolerance(ref, [DATA.size]) == 0.0
    k = make_kernel("sum", "native")
    ref = k.reference(ints)
    assert ref.value == sum(ints.tolist())
    assert isinstance(ref.value, int)
    assert k.tolerance(ref, [10, 20]) == 0.0  # an int64 sum is exact, so is the reference


def test_sum_tolerance_is_the_summation_bound():
    k = make_kernel("sum", "float64")
    ref = k.reference(DATA)
    assert ref.scale == pytest.approx(float(np.abs(DATA).sum()), rel=1e-12)
    assert ref.bound == 0.0  # math.fsum: exact
    longest, nchunks = 5000, 4
    expected = gamma(clog2(longest) + PAIRWISE_EXTRA + nchunks, U64) * ref.scale + U64 * abs(ref.value)
    assert k.tolerance(ref, [longest] * nchunks) == expected
    # the longest chunk sets the depth, the number of chunks adds one step each
    assert k.tolerance(ref, [longest, 3000, 12_001, 0]) == k.tolerance(ref, [12_001] * nchunks)
    # more chunks or longer chunks never shrink the bound
    assert k.tolerance(ref, [longest] * 8) > expected
    assert k.tolerance(ref, [4 * longest]) > k.tolerance(ref, [longest])


def test_square_root_kernels_keep_what_was_under_the_root():
    norm = make_kernel("norm2")
    ref = norm.reference(DATA)
    assert ref.before_sqrt == pytest.approx(float(DATA @ DATA), rel=1e-13)
    assert ref.value == math.sqrt(ref.before_sqrt)
    var_ref = make_kernel("var").reference(DATA)
    std_ref = make_kernel("std").reference(DATA)
    assert math.isnan(var_ref.before_sqrt)
    assert std_ref.before_sqrt == var_ref.value
    assert std_ref.value == math.sqrt(var_ref.value)
    assert std_ref.method == var_ref.method + ", then sqrt"
    # the std bound is the variance bound carried through the root: far smaller than it for var >> tol
    var_tol = make_kernel("var").tolerance(var_ref, [DATA.size])
    assert 0 < make_kernel("std").tolerance(std_ref, [DATA.size]) < var_tol


@pytest.mark.parametrize("name", ["mean", "min", "max", "var", "std"])
def test_empty_array_reference(name):
    k = make_kernel(name)
    ref = k.reference(np.empty(0))
    assert math.isnan(ref.value)
    assert ref.method == "empty array"
    assert k.tolerance(ref, []) == 0.0


def test_verify_refuses_a_different_accumulation_mode():
    k = make_kernel("sum", "native")
    with pytest.raises(RunError, match="accumulated in native, not in float64"):
        verify(k, 0.0, DATA, accumulate="float64", chunk_sizes=[DATA.size], count=DATA.size)


# ---------------------------------------------------------------------------------------------
# adding a kernel touches one place: a registered class


class SumAbs(BuiltinKernel):
    """sum(|x|): a kernel written outside shmhpc, to show what adding one takes.

    Tolerance: any order of n additions has k <= n - 1 + (number of chunks),
    so gamma_(longest + nchunks) * sum|x| holds whatever numpy does inside a
    chunk (a worst case, Higham ch. 4).
    """

    name = "sumabs"
    description = "sum of absolute values"

    def map_chunk(self, chunk: np.ndarray) -> tuple:
        return (int(chunk.size), float(np.abs(chunk).sum(dtype=np.float64)))

    def combine(self, a: tuple, b: tuple) -> tuple:
        return (a[0] + b[0], a[1] + b[1])

    def finalize(self, state: tuple) -> float:
        return state[1]

    def reference(self, flat: np.ndarray) -> Reference:
        value = math.fsum(np.abs(flat).tolist())
        return Reference(value, "math.fsum of |x|", flat.size, flat.dtype, scale=abs_sum(flat))

    def tolerance(self, ref: Reference, chunk_sizes: Sequence[int]) -> float:
        longest, nchunks = self.chunking(ref.n, chunk_sizes)
        return gamma(longest + nchunks, U64) * ref.scale + U64 * ref.value


@pytest.fixture
def sumabs():
    register_kernel(SumAbs)
    try:
        yield SumAbs
    finally:
        unregister_kernel("sumabs")


def test_a_registered_kernel_is_a_builtin_everywhere(sumabs):
    assert builtin_names()[-1] == "sumabs"
    kernel = make_kernel("sumabs")
    assert isinstance(kernel, sumabs)
    value, state, sizes = reduce(kernel, DATA, 7)
    assert state_count(kernel, state) == DATA.size
    report = verify(kernel, value, DATA, accumulate="float64", chunk_sizes=sizes, count=state[0])
    assert report["verified"], report
    assert report["method"] == "math.fsum of |x|"
    assert report["reference"] == math.fsum(np.abs(DATA).tolist())
    bad = verify(kernel, value + 1.0, DATA, accumulate="float64", chunk_sizes=sizes, count=state[0])
    assert not bad["verified"]
    assert "exceeds the tolerance" in bad["detail"]
    # the messages and descriptions that list kernels derive from the registry
    assert describe_kernel("sumabs") == "sum of absolute values"
    with pytest.raises(SpecError, match=r"norm2, sumabs\) nor a 'module:function' path; did you mean 'sumabs'\?"):
        make_kernel("sumab")
    copy = pickle.loads(pickle.dumps(make_kernel("sumabs", "native")))  # noqa: S301
    assert (type(copy), copy.accumulate) == (sumabs, "native")


def test_unregistering_removes_it_again(sumabs):
    unregister_kernel("sumabs")
    try:
        with pytest.raises(SpecError, match=r"'sumabs' is not a built-in kernel \(sum, .*, norm2\)"):
            make_kernel("sumabs")
        assert "sumabs" not in builtin_names()
    finally:
        register_kernel(sumabs)  # the fixture unregisters it


# ---------------------------------------------------------------------------------------------
# pickling into worker processes


def _map_in_child(kernel, chunk):
    return type(kernel).__name__, kernel.accumulate, kernel.map(chunk)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_builtin_kernels_pickle_into_every_start_method(method):
    ctx = multiprocessing.get_context(method)
    chunk = DATA[:1000].astype(np.float32)
    kernels = [make_kernel(name, acc) for name in builtin_names() for acc in ACCUMULATE]
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        got = list(pool.map(_map_in_child, kernels, [chunk] * len(kernels), timeout=60))
    assert got == [(type(k).__name__, k.accumulate, k.map(chunk)) for k in kernels]


def test_builtin_pickles_by_name_through_the_registry():
    reduced = make_kernel("var", "native").__reduce__()
    assert reduced == (reductions.builtin_kernel, ("var", "native", "numpy"))
    fast = make_kernel("sum", "float64", engine="numba")
    assert pickle.loads(pickle.dumps(fast)).engine == "numba"  # noqa: S301  (our own bytes)
