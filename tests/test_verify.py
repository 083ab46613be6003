"""verify(): the reference, the derived tolerance and what it catches."""

from __future__ import annotations

import json
import math
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from shmhpc import summation
from shmhpc import verify as verify_mod
from shmhpc.errors import RunError
from shmhpc.kernels import combine_all, make_kernel, state_count
from shmhpc.verify import verify

JOBS_DIR = str(Path(__file__).resolve().parent.parent / "jobs")


def run(kernel, a: np.ndarray, nchunks: int, accumulate: str = "float64"):
    """Reduce ``a`` in ``nchunks`` row ranges; return (value, count, chunks)."""
    chunks = np.array_split(a, nchunks)
    state = combine_all(kernel, [kernel.map(c) for c in chunks])
    return kernel.finalize(state), state_count(kernel, state), chunks


def check(name: str, a: np.ndarray, accumulate: str = "float64", nchunks: int = 5, **overrides) -> dict:
    kernel = make_kernel(name, accumulate)
    value, count, chunks = run(kernel, a, nchunks, accumulate)
    args = {"value": value, "count": count, "chunk_sizes": [c.size for c in chunks]}
    args.update(overrides)
    return verify(kernel, args["value"], a, accumulate=accumulate, chunk_sizes=args["chunk_sizes"], count=args["count"])


def exact_sum(x: np.ndarray) -> Fraction:
    """Exact sum of a float32 array, fast: group by binary exponent.

    x = m * 2**(e - 24) with m an integer of <= 24 bits; within one exponent
    the integers are summed by np.bincount in float64, exactly, because every
    partial sum stays below 2**53 (2**24 * 20M < 2**49). Blocks of 1M keep the
    temporaries in cache.
    """
    assert x.dtype == np.float32
    offset = 160  # float32 exponents (as frexp gives them) lie in -148..128
    per_exp = np.zeros(300)
    for start in range(0, x.size, 1 << 20):
        mant, exp = np.frexp(x[start : start + (1 << 20)].astype(np.float64))
        per_exp += np.bincount(exp + offset, weights=np.ldexp(mant, 24), minlength=per_exp.size)
    assert np.all(per_exp == np.round(per_exp))
    assert np.abs(per_exp).max() < 2.0**53
    return sum((Fraction(int(s)) * Fraction(2) ** (i - offset - 24) for i, s in enumerate(per_exp) if s), Fraction(0))


rng = np.random.default_rng(99)
DATA = rng.standard_normal(40_000) * 5 + 2


def test_report_is_json_and_complete():
    report = check("mean", DATA)
    assert set(report) == {
        "kernel", "value", "reference", "abs_error", "rel_error", "tolerance", "check", "verified", "method",
        "count_ok", "detail", "nonfinite", "value_nonfinite", "reference_nonfinite",
    }  # fmt: skip
    assert report["verified"] is True and report["check"] == "ok"
    assert report["nonfinite"] == {"nan": 0, "posinf": 0, "neginf": 0}
    assert report["value_nonfinite"] == report["reference_nonfinite"] == 0
    assert report["count_ok"] is True
    assert report["detail"] == ""
    assert "fsum" in report["method"]
    json.dumps(report, allow_nan=False)


def test_exact_sum_helper_agrees_with_fsum():
    x = (rng.standard_normal(50_000) * 1e-3 ** rng.integers(0, 4, 50_000)).astype(np.float32)
    assert float(exact_sum(x)) == math.fsum(x.tolist())


def test_float32_native_sum_of_20m_values_tolerance_is_honest():
    x = np.random.default_rng(5).standard_normal(20_000_000, dtype=np.float32)
    kernel = make_kernel("sum", "native")
    value, count, chunks = run(kernel, x, 4, "native")
    report = verify(kernel, value, x, accumulate="native", chunk_sizes=[c.size for c in chunks], count=count)
    assert report["verified"]
    assert "longdouble" in report["method"]
    exact = exact_sum(x)
    error = float(abs(Fraction(value) - exact))
    assert 0 < error < report["tolerance"]  # float32 does round, and the bound covers it
    if np.finfo(np.longdouble).nmant >= 63:  # x86-64 80-bit extended (or quad): the reference is nearly exact
        assert abs(report["reference"] - float(exact)) <= 1e-9
    # and the bound is a usable one: gamma_k*sum|x| with k ~ 45, not "anything goes"
    assert report["tolerance"] < 1e-5 * float(np.sum(np.abs(x), dtype=np.float64))


def test_longdouble_reference_path_agrees_with_fsum(monkeypatch):
    fsum_report = check("sum", DATA)
    monkeypatch.setattr(summation, "FSUM_MAX", 0)
    ld_report = check("sum", DATA)
    assert "longdouble" in ld_report["method"]
    assert ld_report["verified"]
    assert abs(ld_report["reference"] - fsum_report["reference"]) <= ld_report["tolerance"] - fsum_report["tolerance"]
    assert check("norm2", DATA)["verified"]
    assert "longdouble" in check("norm2", DATA)["method"]


@pytest.mark.parametrize("accumulate", ["float64", "native"])
@pytest.mark.parametrize("name", ["sum", "mean", "var", "std", "norm2"])
def test_a_value_off_by_ten_tolerances_fails(name, accumulate):
    a = DATA.astype(np.float32)
    good = check(name, a, accumulate)
    assert good["verified"]
    assert good["tolerance"] > 0
    bad = check(name, a, accumulate, value=good["value"] + 10 * good["tolerance"])
    assert not bad["verified"]
    assert "exceeds the tolerance" in bad["detail"]
    assert bad["abs_error"] > good["tolerance"]
    # half a tolerance away still passes: the threshold sits where the bound says
    assert check(name, a, accumulate, value=good["reference"] + 0.5 * good["tolerance"])["verified"]


def test_skipped_chunk_is_caught_by_the_count():
    kernel = make_kernel("sum")
    chunks = np.array_split(DATA, 6)
    states = [kernel.map(c) for c in chunks]
    del states[2]  # a worker's chunk got lost
    combined = combine_all(kernel, states)
    report = verify(
        kernel,
        kernel.finalize(combined),
        DATA,
        accumulate="float64",
        chunk_sizes=[c.size for c in chunks],
        count=state_count(kernel, combined),
    )
    assert report["count_ok"] is False
    assert not report["verified"]
    assert report["detail"].startswith(f"count {DATA.size - chunks[2].size} != array size {DATA.size}")
    assert "not reduced" in report["detail"]
    # a chunk reduced twice, even if the value happened to pass, is caught too
    twice = check("min", DATA, count=DATA.size + 10)
    assert not twice["verified"]
    assert "reduced twice" in twice["detail"]


def test_min_max_must_be_exact():
    for name in ("min", "max"):
        good = check(name, DATA)
        assert good["verified"]
        assert good["tolerance"] == 0.0
        assert good["abs_error"] == 0.0
        off = np.nextafter(good["value"], np.inf)
        bad = check(name, DATA, value=float(off))
        assert not bad["verified"]
        assert "exact match required" in bad["detail"]


def test_nan_in_data_is_not_meaningful_never_verified():
    a = DATA.copy()
    a[123] = np.nan
    for name in ("sum", "mean", "min", "max", "var", "std", "norm2"):
        report = check(name, a)
        assert report["check"] == "not meaningful", report
        assert report["verified"] is None
        assert report["nonfinite"] == {"nan": 1, "posinf": 0, "neginf": 0}
        assert report["value_nonfinite"] == report["reference_nonfinite"] == 1
        assert report["detail"] == ("the data has 1 NaN value (of 40,000); a comparison with a reference means nothing")
    # a value that disagrees with the NaN reference is still a failure, not "not meaningful"
    report = check("sum", a, value=1.0)
    assert report["check"] == "failed" and report["verified"] is False
    assert "reference nan" in report["detail"]


def test_nonfinite_data_is_counted_by_kind_and_a_finite_check_still_counts():
    a = DATA.copy()
    a[[1, 2, 3]] = np.nan
    a[10] = np.inf
    a[[20, 21]] = -np.inf
    report = check("sum", a)
    assert report["nonfinite"] == {"nan": 3, "posinf": 1, "neginf": 2}
    assert report["detail"].startswith("the data has 3 NaN, 1 +inf and 2 -inf values (of 40,000);")
    assert report["verified"] is None
    # min over data holding +inf is finite and compared exactly: a real check, and the counts are still there
    b = DATA.copy()
    b[10] = np.inf
    low = check("min", b)
    assert low["check"] == "ok" and low["verified"] is True
    assert low["nonfinite"] == {"nan": 0, "posinf": 1, "neginf": 0}
    assert check("min", b, value=float(np.nextafter(low["value"], np.inf)))["verified"] is False
    # max is +inf on both sides: equal infinities prove nothing
    high = check("max", b)
    assert high["check"] == "not meaningful" and high["verified"] is None


def test_count_nonfinite_in_blocks_without_a_full_size_temporary(monkeypatch):
    a = np.ones(10_000_000, dtype=np.float32)  # 40 MB
    a[[0, 4_194_303, 4_194_304, 9_999_999]] = [np.nan, np.inf, -np.inf, np.nan]  # on both sides of a block edge
    tracemalloc.start()
    try:
        counts = verify_mod.count_nonfinite(a)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts == {"nan": 2, "posinf": 1, "neginf": 1}
    assert peak < 2 * verify_mod._SCAN_BLOCK  # one 4 MiB boolean buffer, not a 10 MB mask or a copy
    monkeypatch.setattr(verify_mod, "_SCAN_BLOCK", 7)  # blocks of 7: the last one short
    b = np.array([[1.0, np.nan, 3.0], [np.inf, 5.0, 6.0], [7.0, 8.0, -np.inf], [np.nan, 1.0, 2.0]])
    assert verify_mod.count_nonfinite(b) == {"nan": 2, "posinf": 1, "neginf": 1}
    assert verify_mod.count_nonfinite(np.arange(10)) is None  # integers are always finite: not scanned
    assert verify_mod.count_nonfinite(np.empty(0)) == {"nan": 0, "posinf": 0, "neginf": 0}


def test_count_nonfinite_values_of_results():
    count = verify_mod.count_nonfinite_values
    assert (count(1.5), count(math.nan), count(-math.inf), count(2**2000)) == (0, 1, 1, 0)
    assert count([1.0, math.nan]) == 1
    assert count([[1.0, math.nan], [math.inf, 2.0]]) == 2
    assert count("text") is None


def test_float32_overflow_of_finite_data_fails_as_a_nonfinite_result():
    a = np.full(1000, 3e38, dtype=np.float32)  # finite; the sum is 3e41, past float32's 3.4e38
    for name in ("sum", "mean", "norm2"):
        native = check(name, a, "native")
        assert native["value"] == math.inf
        assert native["check"] == "failed" and native["verified"] is False
        assert native["value_nonfinite"] == 1 and native["reference_nonfinite"] == 0
        assert native["nonfinite"] == {"nan": 0, "posinf": 0, "neginf": 0}
        assert "value inf but reference" in native["detail"]
        assert check(name, a, "float64")["verified"] is True  # accumulated in float64 it fits


def test_overflow_on_both_sides_is_not_meaningful():
    a = np.full(4, 1e308)  # finite float64 data whose sum overflows float64 in both value and reference
    report = check("sum", a, nchunks=2)
    assert report["value"] == report["reference"] == math.inf
    assert report["check"] == "not meaningful" and report["verified"] is None
    assert report["detail"] == (
        "the result is inf, as in the reference, from finite data; a comparison with a reference means nothing"
    )


def test_a_tolerance_that_accepts_anything_is_not_meaningful(tmp_path, monkeypatch):
    (tmp_path / "ukern_loose.py").write_text(
        "import numpy as np\n\ndef f(chunk):\n    return float(np.sum(chunk))\n\nf.rtol = 1e300\n"
    )
    k = make_kernel("ukern_loose:f", search_path=[str(tmp_path)])
    monkeypatch.delitem(__import__("sys").modules, "ukern_loose")
    a = np.full(10, 1e10)
    report = verify(k, 12345.0, a, accumulate="float64", chunk_sizes=[5, 5], count=None)  # far off, finite
    assert report["tolerance"] == math.inf
    assert report["check"] == "not meaningful" and report["verified"] is None
    assert report["detail"].startswith("the tolerance is inf: it would accept any value")


def test_describe_nonfinite():
    describe = verify_mod.describe_nonfinite
    assert describe({"nonfinite": {"nan": 0, "posinf": 0, "neginf": 0}, "value_nonfinite": 0}, 10) is None
    assert describe({"nonfinite": None, "value_nonfinite": 0, "check": "ok"}, 10) is None
    both = {"nonfinite": {"nan": 1234, "posinf": 0, "neginf": 1}, "value": math.nan, "value_nonfinite": 1}
    assert describe(both, 300_000) == "the data has 1,234 NaN and 1 -inf values (of 300,000); the result is nan"
    listed = {"value": [1.0, math.inf, math.nan], "value_nonfinite": 2, "check": "off"}
    assert describe(listed, 5) == "2 of 3 result elements are NaN or inf"


def test_integer_overflow_fails_native_and_passes_float64():
    a = np.full(64, 2**62, dtype=np.int64)  # the true sum is 2**68: int64 wraps
    native = check("sum", a, "native", nchunks=2)
    assert native["reference"] == 2**68
    assert not native["verified"]
    assert native["tolerance"] == 0.0
    assert "exact match required" in native["detail"]
    f64 = check("sum", a, "float64", nchunks=2)
    assert f64["verified"]
    assert f64["value"] == 2.0**68
    assert check("mean", a, "float64")["verified"]


def test_exact_integer_reference_for_mixed_64_bit_values():
    a = np.array([2**62, -(2**63), 2**63 - 1, -5, 7, -(2**40)], dtype=np.int64)
    small = np.random.default_rng(1).integers(-(2**31), 2**31, 5000)
    for arr in (a, small, small.astype(np.uint32), (small > 0)):
        report = check("sum", arr, "float64", nchunks=2)
        assert report["reference"] == sum(int(v) for v in arr.tolist())
        assert report["verified"], report


def test_var_tolerance_holds_for_float32_offset_data():
    a = (np.random.default_rng(2).standard_normal(300_000) + 1000.0).astype(np.float32)
    for name in ("var", "std"):
        report = check(name, a, "native", nchunks=3)
        assert report["verified"], report
        # the reference is good to far better than the tolerance
        exact = float(np.var(a.astype(np.float64) - np.mean(a, dtype=np.float64)))
        assert abs(report["reference"] - (exact if name == "var" else math.sqrt(exact))) < 1e-10


def test_rel_error_is_safe_at_zero():
    zeros = np.zeros(100)
    report = check("sum", zeros)
    assert report["verified"]
    assert report["rel_error"] == 0.0
    report = check("sum", zeros, value=1.0)
    assert not report["verified"]
    assert report["rel_error"] == math.inf


# ---------------------------------------------------------------------------------------------
# user kernels


def user(spec: str):
    return make_kernel(spec, search_path=[JOBS_DIR])


def test_user_kernel_rtol_from_the_kernel():
    a = np.random.default_rng(4).standard_normal((200, 30))
    k = user("example_kernels:sincos_energy")
    value, _, chunks = run(k, a, 3)
    good = verify(k, value, a, accumulate="float64", chunk_sizes=[c.size for c in chunks], count=None)
    assert good["verified"]
    assert "rtol=1e-09" in good["method"]
    assert "one call" in good["method"]
    assert good["tolerance"] == pytest.approx(1e-9 * abs(good["reference"]))
    bad = verify(k, value * (1 + 1e-8), a, accumulate="float64", chunk_sizes=[], count=None)
    assert not bad["verified"]
    assert "exceeds atol + rtol" in bad["detail"]


def test_user_list_results_compare_elementwise():
    a = np.random.default_rng(6).standard_normal(5000)
    k = user("example_kernels:Histogram")
    counts, _, _ = run(k, a, 4)
    assert verify(k, counts, a, accumulate="float64", chunk_sizes=[], count=None)["verified"]
    wrong = list(counts)
    wrong[7] += 1
    report = verify(k, wrong, a, accumulate="float64", chunk_sizes=[], count=None)
    assert not report["verified"]
    assert report["detail"].startswith("element [7]:")
    assert report["abs_error"] == 1.0
    short = verify(k, counts[:-1], a, accumulate="float64", chunk_sizes=[], count=None)
    assert not short["verified"]
    assert "shape" in short["detail"]


def test_user_reference_over_row_blocks_for_big_arrays(monkeypatch):
    # shrink the "big array" thresholds so the row-block path runs on a small array
    monkeypatch.setattr(verify_mod, "_USER_ONE_CALL_BYTES", 1000)
    monkeypatch.setattr(verify_mod, "_USER_BLOCK_BYTES", 800)
    a = np.random.default_rng(8).standard_normal((97, 5))  # 40 bytes a row: 20 rows a block
    k = user("example_kernels:Histogram")
    counts, _, _ = run(k, a, 2)
    report = verify(k, counts, a, accumulate="float64", chunk_sizes=[], count=None)
    assert report["verified"]
    assert "5 row blocks of 20 rows" in report["method"]


def test_user_kernel_failing_in_the_reference_is_a_run_error(tmp_path, monkeypatch):
    (tmp_path / "ukern_fragile.py").write_text(
        "def f(chunk):\n    if chunk.size > 10:\n        raise ValueError('big')\n    return 1.0\n"
    )
    k = make_kernel("ukern_fragile:f", search_path=[str(tmp_path)])
    monkeypatch.delitem(__import__("sys").modules, "ukern_fragile")
    with pytest.raises(RunError, match="raised while computing the reference: ValueError: big"):
        verify(k, 2.0, np.ones(20), accumulate="float64", chunk_sizes=[10, 10], count=None)
