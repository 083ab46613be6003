"""The numba engine: float64 sums of float32/float64 chunks, its error bound, and how a job picks it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from shmhpc import fastsum
from shmhpc.reductions import builtin_kernel
from shmhpc.summation import U64, gamma

numba = pytest.importorskip("numba", reason="engine: numba needs the `fast` extra (the test extra installs it)")


def exact(x: np.ndarray) -> float:
    """The exactly rounded sum (every float32/float64 is a dyadic rational)."""
    return float(sum((Fraction(float(v)) for v in x.tolist()), Fraction(0)))


def hostile_arrays(rng: np.random.Generator) -> list[np.ndarray]:
    n = 300_001  # not a multiple of a block, a group or a vector width
    big = rng.standard_normal(n).astype(np.float32) * np.float32(1e6)
    cancel = np.empty(n, np.float32)
    cancel[0::2], cancel[1::2] = np.float32(1e7), np.float32(-1e7)
    cancel[::7] += np.float32(0.5)
    spread = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(np.float64)
    return [big, cancel, spread, np.float32(0.1) * np.ones(n, np.float32), np.arange(n, dtype=np.float64)]


@pytest.mark.parametrize("case", range(5))
def test_the_sum_stays_within_its_derived_bound(case: int) -> None:
    x = hostile_arrays(np.random.default_rng(case))[case]
    got = fastsum.sum_float64(x)
    err = abs(got - exact(x))
    bound = gamma(fastsum.sum_depth(x.size), U64) * float(np.sum(np.abs(x), dtype=np.float64))
    assert err <= bound
    # and it is a float64 accumulation, not a float32 one: far below what float32 steps would lose
    assert err <= 1e-9 * float(np.sum(np.abs(x), dtype=np.float64)) + 1e-300


def test_depth_is_at_most_one_block_one_group_and_the_groups() -> None:
    assert fastsum.sum_depth(0) == 0 and fastsum.sum_depth(1) == 0
    assert fastsum.sum_depth(100) == 99  # no more additions than elements
    n = 10_000_000
    assert fastsum.sum_depth(n) == fastsum.BLOCK + fastsum.GROUP + math.ceil(n / (fastsum.BLOCK * fastsum.GROUP))
    # a float64-accumulation bound: far below one float32 rounding (6e-8) of sum|x|
    assert gamma(fastsum.sum_depth(n), U64) < 1e-12


def test_nan_and_inf_propagate_as_in_numpy() -> None:
    for dtype in (np.float32, np.float64):
        assert math.isnan(fastsum.sum_float64(np.array([1.0, np.nan, 2.0], dtype)))
        assert fastsum.sum_float64(np.array([1.0, np.inf, 2.0], dtype)) == math.inf
        assert math.isnan(fastsum.sum_float64(np.array([np.inf, -np.inf], dtype)))
        assert fastsum.sum_float64(np.zeros(0, dtype)) == 0.0


def test_read_only_and_strided_chunks() -> None:
    x = np.arange(10_000, dtype=np.float32)
    x.flags.writeable = False
    assert fastsum.sum_float64(x) == float(np.sum(x, dtype=np.float64))
    assert fastsum.sum_float64(x[::3]) == float(np.sum(x[::3], dtype=np.float64))  # numpy path


def test_builtin_kernels_use_it_in_both_accumulate_modes() -> None:
    x = np.random.default_rng(1).standard_normal(100_003).astype(np.float32)
    want = exact(x)
    for acc in ("native", "float64"):
        k = builtin_kernel("sum", acc, "numba")
        k.prepare()
        n, s = k.map(x)
        assert n == x.size and abs(s - want) <= 1e-12 * float(np.abs(x).sum())
        ref = k.reference(x)
        assert abs(s - ref.value) <= k.tolerance(ref, [x.size])
    mean = builtin_kernel("mean", "float64", "numba")
    assert abs(mean.finalize(mean.map(x)) - want / x.size) <= 1e-15
    ints = builtin_kernel("sum", "native", "numba")
    assert ints.map(np.arange(10, dtype=np.int64)) == (10, 45)  # integers keep numpy's exact path


def test_choose_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    big = fastsum.AUTO_MIN_BYTES_PER_WORKER
    assert fastsum.choose_engine("numpy", "sum", "float32", big, 10)[0] == "numpy"
    assert fastsum.choose_engine("numba", "mean", "float64", 1, 1) == ("numba", "engine: numba asked for")
    assert fastsum.choose_engine("auto", "sum", "float32", big // 4, 4)[0] == "numba"
    engine, why = fastsum.choose_engine("auto", "sum", "float32", 80_000_000, 6)
    assert engine == "numpy" and "too little" in why and "0.48 GB" in why
    engine, why = fastsum.choose_engine("auto", "var", "float32", big, 6)
    assert engine == "numpy" and "no fast path for kernel 'var'" in why
    assert fastsum.choose_engine("auto", "sum", "int64", big, 6)[0] == "numpy"
    with pytest.raises(ValueError, match="not kernel 'max' on float32"):
        fastsum.choose_engine("numba", "max", "float32", big, 6)
    monkeypatch.setattr(fastsum, "numba_installed", lambda: False)
    engine, why = fastsum.choose_engine("auto", "sum", "float32", big, 6)
    assert engine == "numpy" and "not installed" in why and "shmhpc[fast]" in why
    with pytest.raises(ValueError, match=r"engine: numba is not installed \(pip install 'shmhpc\[fast\]'\)"):
        fastsum.choose_engine("numba", "sum", "float32", big, 6)


def _run(tmp_path, *sets: str) -> subprocess.CompletedProcess:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: fast\ndata: {size: 3_000_017, dtype: float32}\nworkers: 2\nrepeats: 2\n")
    cmd = [sys.executable, "-m", "shmhpc", "run", str(spec), "--report", str(tmp_path / "r.json"), "--force"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("kernel", "accumulate"), [("sum", "float64"), ("mean", "native")])
def test_a_run_with_the_numba_engine_is_verified_and_says_so(tmp_path, kernel: str, accumulate: str) -> None:
    proc = _run(tmp_path, "engine=numba", f"kernel={kernel}", f"accumulate={accumulate}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())["result"]
    assert result["engine"] == "numba" and result["engine_reason"] == "engine: numba asked for"
    assert result["verified"] is True and result["abs_error"] <= result["tolerance"]


def test_auto_keeps_numpy_for_a_small_job_and_says_why(tmp_path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())["result"]
    assert result["engine"] == "numpy" and "too little to repay numba's start" in result["engine_reason"]


def test_numba_for_a_kernel_without_a_fast_path_is_a_spec_error(tmp_path) -> None:
    proc = _run(tmp_path, "engine=numba", "kernel=var")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: engine: numba has a fast path for sum and mean")
    assert "Traceback" not in proc.stderr


def test_compare_tells_numpy_and_numba_runs_apart(tmp_path) -> None:
    reports = []
    for engine in ("numpy", "numba"):
        (tmp_path / engine).mkdir()
        assert _run(tmp_path / engine, f"engine={engine}").returncode == 0
        reports.append(str(tmp_path / engine / "r.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "shmhpc", "compare", *reports], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout and "numba" in proc.stdout
    assert any("engine" in line and "numba" in line for line in proc.stdout.splitlines()), proc.stdout


def test_a_user_kernels_own_prepare_is_not_called(tmp_path) -> None:
    """Workers warm up built-in kernels (numba's load); a user object that happens to have `prepare` is left alone."""
    (tmp_path / "own.py").write_text(
        "class Counting:\n"
        "    def prepare(self):\n"
        "        raise RuntimeError('shmhpc called my prepare')\n"
        "    def map(self, chunk):\n"
        "        return int(chunk.size)\n"
        "    def combine(self, a, b):\n"
        "        return a + b\n"
        "    def finalize(self, s):\n"
        "        return s\n"
    )
    proc = _run(tmp_path, "kernel=own:Counting", "verify=false")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["result"]["value"] == 3_000_017
