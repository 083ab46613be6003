"""Kernels: built-ins against numpy over random chunk partitions, Chan merging, user kernels, spec errors."""

from __future__ import annotations

import itertools
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmhpc.errors import RunError, SpecError
from shmhpc.kernels import (
    ACCUMULATE,
    SUBBLOCK_ELEMENTS,
    builtin_names,
    combine_all,
    describe_kernel,
    make_kernel,
    state_count,
)
from shmhpc.verify import verify

JOBS_DIR = str(Path(__file__).resolve().parent.parent / "jobs")

_rng = np.random.default_rng(20240611)
ARRAYS = {
    "float32": (_rng.standard_normal(2500) * 3 + 5).astype(np.float32),
    "float64": _rng.standard_normal(3001) * 1e3 - 7.0,
    "float64-2d": _rng.standard_normal((123, 17)),
    "int32": _rng.integers(-(2**30), 2**30, size=2000, dtype=np.int32),
}


def split_rows(a: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    """Row ranges of ``a`` between sorted cut points (empty chunks allowed), like the runner's chunks."""
    bounds = [0, *sorted(c % (a.shape[0] + 1) for c in cuts), a.shape[0]]
    return [a[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def run_kernel(kernel, chunks):
    state = combine_all(kernel, [kernel.map(c) for c in chunks])
    return kernel.finalize(state), state


def numpy_value(name: str, a: np.ndarray):
    """What numpy says, computed in float64 with its pairwise sums."""
    x = a.astype(np.float64)
    return {
        "sum": np.sum(x),
        "mean": np.mean(x),
        "min": np.min(a),
        "max": np.max(a),
        "var": np.var(x),
        "std": np.std(x),
        # not np.linalg.norm: it goes through BLAS dot, whose error bound grows with n, not log2(n)
        "norm2": np.sqrt(np.sum(x * x)),
    }[name].item()


@pytest.mark.parametrize("acc", ACCUMULATE)
@pytest.mark.parametrize("name", builtin_names())
@pytest.mark.parametrize("which", sorted(ARRAYS))
@settings(max_examples=8, deadline=None, database=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=7))
def test_builtin_matches_numpy_over_any_partition(which, name, acc, cuts):
    a = ARRAYS[which]
    kernel = make_kernel(name, acc)
    chunks = split_rows(a, cuts)
    value, state = run_kernel(kernel, chunks)
    assert state_count(kernel, state) == a.size  # the count is carried through every combine
    report = verify(
        kernel, value, a, accumulate=acc, chunk_sizes=[c.size for c in chunks], count=state_count(kernel, state)
    )
    assert report["verified"], report
    expected = numpy_value(name, a)
    if name in ("min", "max"):
        assert value == expected
        assert type(value) is type(expected)
    else:
        assert abs(value - expected) <= report["tolerance"], (value, expected, report)


@pytest.mark.parametrize("name", ["var", "std", "norm2"])
@pytest.mark.parametrize("acc", ACCUMULATE)
def test_subblocked_kernels_across_subblock_boundaries(name, acc):
    # chunks longer than one sub-block, cut off-boundary, so the sub-block merge path runs
    a = (_rng.standard_normal(3 * SUBBLOCK_ELEMENTS + 777) * 2 + 3).astype(np.float32)
    cuts = [5, SUBBLOCK_ELEMENTS + 3, 2 * SUBBLOCK_ELEMENTS + SUBBLOCK_ELEMENTS // 2]
    kernel = make_kernel(name, acc)
    chunks = split_rows(a, cuts)
    value, state = run_kernel(kernel, chunks)
    report = verify(kernel, value, a, accumulate=acc, chunk_sizes=[c.size for c in chunks], count=state[0])
    assert report["verified"], report
    assert abs(value - numpy_value(name, a)) <= report["tolerance"]


def test_chan_merge_with_empty_and_single_element_chunks():
    kernel = make_kernel("var")
    a = np.array([3.0, -1.0, 4.5, 2.0, 2.0, 10.0])
    chunks = [a[:0], a[0:1], a[1:1], a[1:2], a[2:5], a[5:6], a[6:]]
    value, state = run_kernel(kernel, chunks)
    assert state[0] == 6
    assert value == pytest.approx(np.var(a), rel=1e-14)
    # an empty state is the identity on both sides, bit for bit
    empty = kernel.map(a[:0])
    full = kernel.map(a)
    assert kernel.combine(empty, full) == full
    assert kernel.combine(full, empty) == full
    # merging single elements one by one equals numpy's two-pass result
    value_single, _ = run_kernel(kernel, [a[i : i + 1] for i in range(a.size)])
    assert value_single == pytest.approx(np.var(a), rel=1e-14)
    assert make_kernel("std").finalize(state) == pytest.approx(np.std(a), rel=1e-14)


def test_var_of_large_offset_data_stays_accurate_in_float64_mode():
    rng = np.random.default_rng(7)
    a = rng.standard_normal(1_000_003) + 1e6  # mean 1e6, std 1
    exact_var = np.var(a - np.mean(a))  # two-pass in float64 on centred data
    # the data is hard: the textbook E[x^2] - E[x]^2 loses most digits
    naive = np.mean(a * a) - np.mean(a) ** 2
    assert abs(naive - exact_var) / exact_var > 1e-6
    kernel = make_kernel("var", "float64")
    chunks = split_rows(a, [1, 2, 99_999, 500_000, 500_001, 900_000])
    value, _ = run_kernel(kernel, chunks)
    assert abs(value - exact_var) / exact_var < 1e-9


def test_min_max_propagate_nan_and_keep_integer_type():
    a = np.array([1.0, 2.0, np.nan, -3.0])
    for name in ("min", "max"):
        kernel = make_kernel(name)
        value, state = run_kernel(kernel, [a[:2], a[2:3], a[3:], a[4:]])
        assert math.isnan(value)
        assert state[0] == 4
    ints = np.array([[5, -2], [7, 1]], dtype=np.int64)
    value, _ = run_kernel(make_kernel("min", "native"), [ints[:1], ints[1:]])
    assert value == -2
    assert isinstance(value, int)


def test_native_integer_sum_is_exact_and_python_int():
    a = np.full(10, 2**60, dtype=np.int64)
    a[3] = -7
    # each chunk stays below 2**63, so native int64 sums are exact; the combine is a python int
    chunks = [a[:4], a[4:7], a[7:]]
    value, _ = run_kernel(make_kernel("sum", "native"), chunks)
    assert value == sum(a.tolist())
    assert isinstance(value, int)
    assert run_kernel(make_kernel("mean", "native"), chunks)[0] == sum(a.tolist()) / 10


def test_empty_everything():
    for name in ("sum", "norm2"):
        assert make_kernel(name).finalize(make_kernel(name).map(np.empty(0))) == 0.0
    for name in ("mean", "var", "std"):
        assert math.isnan(make_kernel(name).finalize(make_kernel(name).map(np.empty((0, 3)))))
    with pytest.raises(RunError, match="no elements"):
        make_kernel("min").finalize(make_kernel("min").map(np.empty(0)))
    with pytest.raises(RunError, match="no partial states"):
        combine_all(make_kernel("sum"), [])


def test_builtin_rejects_complex_data():
    with pytest.raises(SpecError, match="real-valued"):
        make_kernel("sum").map(np.ones(3, dtype=np.complex128))


def test_kernels_pickle_by_spec():
    # our own objects, round-tripped in-process
    k = pickle.loads(pickle.dumps(make_kernel("std", "native")))  # noqa: S301
    assert (k.name, k.accumulate, k.builtin) == ("std", "native", True)
    u = pickle.loads(pickle.dumps(make_kernel("example_kernels:Histogram", search_path=[JOBS_DIR])))  # noqa: S301
    assert u.name == "example_kernels:Histogram"
    assert not u.builtin
    assert u.finalize(u.map(np.array([0.1, 0.2, 9.0])))[16] == 2


def test_describe_kernel():
    assert "variance" in describe_kernel("var")
    assert "native" in describe_kernel(make_kernel("sum", "native"))
    assert describe_kernel("m:f") == "user kernel m:f"


# ---------------------------------------------------------------------------------------------
# user kernels


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Write throwaway modules into tmp_path; forget them from sys.modules afterwards."""
    before = set(sys.modules)

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        return str(tmp_path)

    yield write
    for name in set(sys.modules) - before:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_plain_function_kernel_scalar_and_array(user_modules):
    path = user_modules(
        "ukern_plain",
        "import numpy as np\n"
        "def total(chunk):\n    return np.sum(chunk, dtype=np.float32)\n"
        "def moments(chunk):\n    return np.array([chunk.size, chunk.sum(), (chunk * chunk).sum()])\n"
        "total.rtol = 1e-3\n",
    )
    a = np.arange(12.0).reshape(4, 3)
    k = make_kernel("ukern_plain:total", search_path=[path])
    assert path not in sys.path  # the search path is there for the import only
    assert not k.builtin
    assert k.rtol == 1e-3
    assert k.atol == 0.0
    value, state = run_kernel(k, [a[:1], a[1:3], a[3:]])
    assert value == 66.0
    assert isinstance(value, float)
    assert isinstance(state, float)
    assert state_count(k, state) is None
    m = make_kernel("ukern_plain:moments", search_path=[path])
    value, _ = run_kernel(m, [a[:2], a[2:]])
    assert value == [12.0, 66.0, float((a * a).sum())]


def test_object_kernel_class_and_instance(user_modules):
    path = user_modules(
        "ukern_obj",
        "class MinMax:\n"
        "    rtol = 0.0\n"
        "    def map(self, chunk):\n        return (float(chunk.min()), float(chunk.max()))\n"
        "    def combine(self, a, b):\n        return (min(a[0], b[0]), max(a[1], b[1]))\n"
        "    def finalize(self, s):\n        return list(s)\n"
        "instance = MinMax()\n",
    )
    a = np.array([4.0, -2.0, 9.0, 1.0])
    for spec in ("ukern_obj:MinMax", "ukern_obj:instance"):
        k = make_kernel(spec, search_path=[path])
        assert k.rtol == 0.0
        assert run_kernel(k, [a[:1], a[1:]])[0] == [-2.0, 9.0]


def test_example_kernels_module():
    a = np.random.default_rng(3).standard_normal((300, 50))
    chunks = split_rows(a, [17, 150, 151])
    energy = make_kernel("example_kernels:sincos_energy", search_path=[JOBS_DIR])
    assert energy.rtol == 1e-9
    value, _ = run_kernel(energy, chunks)
    x = a.reshape(-1)
    expected = sum(
        float(np.sum(np.sin(w * x) ** 2 + np.cos(3 * w * x) * np.exp(-0.5 * (w * x) ** 2))) for w in (1, 1.125, 1.25)
    )
    assert value == pytest.approx(expected, rel=1e-12)
    report = verify(energy, value, a, accumulate="float64", chunk_sizes=[c.size for c in chunks], count=None)
    assert report["verified"]
    assert report["count_ok"] is None

    hist = make_kernel("example_kernels:Histogram", search_path=[JOBS_DIR])
    counts, _ = run_kernel(hist, chunks)
    assert counts == np.histogram(a, bins=32, range=(-4, 4))[0].tolist()
    assert all(isinstance(c, int) for c in counts)
    assert hist.rtol == 0.0
    assert verify(hist, counts, a, accumulate="float64", chunk_sizes=[], count=None)["verified"]
    assert len(run_kernel(make_kernel("example_kernels:histogram16", search_path=[JOBS_DIR]), chunks)[0]) == 16


# ---------------------------------------------------------------------------------------------
# spec errors: one line each, naming the field, the value and what is allowed


def spec_error(spec: str, **kw) -> str:
    with pytest.raises(SpecError) as info:
        make_kernel(spec, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(("kernel: ", "accumulate: "))
    return msg


def test_unknown_builtin_suggests_closest():
    assert spec_error("summ") == (
        "kernel: 'summ' is not a built-in kernel (sum, mean, min, max, var, std, norm2) "
        "nor a 'module:function' path; did you mean 'sum'?"
    )
    assert "did you mean 'norm2'" in spec_error("norm")
    assert "did you mean" not in spec_error("mod:1bad")
    assert "did you mean" not in spec_error("completely different")


def test_bad_accumulate():
    assert spec_error("sum", accumulate="float32") == "accumulate: 'float32' is not one of float64, native"


def test_missing_module():
    assert spec_error("nope_not_here:f") == (
        "kernel: cannot import module 'nope_not_here' ('nope_not_here:f'): "
        "ModuleNotFoundError: No module named 'nope_not_here'"
    )


def test_missing_attribute_with_hint(user_modules):
    path = user_modules("ukern_attr", "def energy(chunk):\n    return 0.0\n")
    assert spec_error("ukern_attr:f", search_path=[path]) == "kernel: module 'ukern_attr' has no attribute 'f'"
    assert "did you mean 'energy'" in spec_error("ukern_attr:energi", search_path=[path])
    assert "'ukern_attr:energy' has no attribute 'x'" in spec_error("ukern_attr:energy.x", search_path=[path])


def test_not_callable_and_incomplete_objects(user_modules):
    path = user_modules(
        "ukern_shapes",
        "LIMIT = 3\n"
        "class Bare:\n    pass\n"
        "class Half:\n    def map(self, c):\n        return 0\n"
        "class NeedsArgs:\n"
        "    def __init__(self, k):\n        pass\n"
        "    def map(self, c):\n        return 0\n"
        "    def combine(self, a, b):\n        return a\n"
        "    def finalize(self, s):\n        return s\n"
        "def f(chunk):\n    return 0.0\n"
        "f.rtol = -1\n",
    )
    sp = [path]
    assert spec_error("ukern_shapes:LIMIT", search_path=sp) == (
        "kernel: 'ukern_shapes:LIMIT' is not callable and has no map/combine/finalize"
    )
    assert "is a class without map/combine/finalize" in spec_error("ukern_shapes:Bare", search_path=sp)
    assert "has map but lacks combine, finalize" in spec_error("ukern_shapes:Half", search_path=sp)
    assert "cannot instantiate class 'ukern_shapes:NeedsArgs' with no arguments: TypeError" in spec_error(
        "ukern_shapes:NeedsArgs", search_path=sp
    )
    assert "has rtol=-1.0; rtol must be a non-negative number" in spec_error("ukern_shapes:f", search_path=sp)


def test_module_raising_at_import_is_a_one_line_spec_error(user_modules):
    path = user_modules("ukern_boom", "import numpy\nraise RuntimeError('boom\\nsecond line')\n")
    assert spec_error("ukern_boom:f", search_path=[path]) == (
        "kernel: cannot import module 'ukern_boom' ('ukern_boom:f'): RuntimeError: boom second line"
    )
    assert "ukern_boom" not in sys.modules
    assert path not in sys.path
    path = user_modules("ukern_exit", "raise SystemExit(3)\n")
    assert spec_error("ukern_exit:f", search_path=[path]).endswith("SystemExit: 3")


def test_user_results_must_be_numbers(user_modules):
    path = user_modules("ukern_bad_result", "def f(chunk):\n    return 'x'\n")
    k = make_kernel("ukern_bad_result:f", search_path=[path])
    with pytest.raises(RunError, match="a number or an ndarray is needed"):
        k.map(np.ones(3))
