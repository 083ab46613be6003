"""NaN and inf in the data or the result: counted, never "verified", and ``on_nonfinite: fail`` fails the run.

Every case is a real run through the CLI on a small .npy file (or generated data with a kernel beside the spec).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from conftest import load_json, run_cli, small_spec

NPY = "{source: npy, path: x.npy}"
COUNTS = "the data has 3 NaN and 1 +inf values (of 300,000)"
NAN_KERNELS = """
import numpy as np

def log_sum(chunk):
    # finite data, a NaN result: the log of the negative values
    with np.errstate(invalid="ignore"):
        return float(np.sum(np.log(chunk), dtype=np.float64))
"""


def write_npy(tmp_path: Path, nonfinite: bool = True) -> np.ndarray:
    a = np.random.default_rng(11).standard_normal(300_000).astype(np.float32)
    if nonfinite:
        a[[17, 150_000, 299_999]] = np.nan
        a[42] = np.inf
    np.save(tmp_path / "x.npy", a)
    return a


def run(spec: Path, rc: int) -> tuple[dict, str, str]:
    out = run_cli("run", str(spec), cwd=spec.parent)
    assert out.returncode == rc, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    rep = load_json(spec.parent / "reports" / f"{spec.stem}.json")
    assert rep["exit_code"] == rc
    return rep, out.stdout, out.stderr


def test_nonfinite_data_warns_with_counts_and_is_not_verified(tmp_path, no_leak):
    write_npy(tmp_path)
    rep, stdout, _ = run(small_spec(tmp_path, data=NPY), 0)
    assert rep["status"] == "ok"
    res = rep["result"]
    assert math.isnan(res["value"]) and math.isnan(res["reference"])
    assert res["verified"] is None and res["check"] == "not meaningful"
    assert res["nonfinite"] == {"nan": 3, "posinf": 1, "neginf": 0}
    assert res["value_nonfinite"] == res["reference_nonfinite"] == 1
    assert res["detail"] == f"{COUNTS}; a comparison with a reference means nothing"
    assert (
        f"non-finite values: {COUNTS}; the result is nan; NOT VERIFIED: a comparison with a reference means nothing"
        " (on_nonfinite: fail would fail the run)"
    ) in rep["warnings"]
    assert f"  result: sum = nan, NOT VERIFIED: {COUNTS}; a comparison with a reference means nothing\n" in stdout
    assert "verified (" not in stdout and "tolerance nan" not in stdout


def test_on_nonfinite_fail_fails_the_run_naming_the_counts(tmp_path, no_leak):
    write_npy(tmp_path)
    rep, stdout, stderr = run(small_spec(tmp_path, data=NPY, kernel="max", on_nonfinite="fail"), 1)
    assert rep["status"] == "failed"
    assert rep["error"] == f"non-finite values (on_nonfinite: fail): {COUNTS}; the result is nan"
    assert rep["error"] in stderr
    assert rep["result"]["nonfinite"] == {"nan": 3, "posinf": 1, "neginf": 0}
    assert rep["result"]["verified"] is None
    assert f"  result: max = nan, NOT VERIFIED: {COUNTS}" in stdout


def test_finite_data_verifies_as_before_even_with_fail(tmp_path, no_leak):
    write_npy(tmp_path, nonfinite=False)
    rep, stdout, _ = run(small_spec(tmp_path, data=NPY, on_nonfinite="fail"), 0)
    res = rep["result"]
    assert res["verified"] is True and res["check"] == "ok" and res["detail"] == ""
    assert res["nonfinite"] == {"nan": 0, "posinf": 0, "neginf": 0}
    assert res["value_nonfinite"] == res["reference_nonfinite"] == 0
    assert not any("non-finite" in w for w in rep["warnings"])
    assert "  result: sum = " in stdout and ", verified (abs error " in stdout


def test_float32_overflow_of_finite_data_is_a_nonfinite_result_and_fails(tmp_path, no_leak):
    np.save(tmp_path / "x.npy", np.full(300_000, 3e38, dtype=np.float32))  # finite; the sum is 9e43
    rep, stdout, stderr = run(small_spec(tmp_path, data=NPY, accumulate="native"), 1)
    res = rep["result"]
    assert res["value"] == math.inf and math.isfinite(res["reference"])
    assert res["check"] == "failed" and res["verified"] is False
    assert res["value_nonfinite"] == 1 and res["reference_nonfinite"] == 0
    assert res["nonfinite"] == {"nan": 0, "posinf": 0, "neginf": 0}
    assert "  result: sum = inf, VERIFICATION FAILED: value inf but reference 9.0000" in stdout
    assert "verification failed: sum = inf" in stderr
    assert "verified (" not in stdout


def test_verify_off_does_not_scan_the_data_but_counts_a_nonfinite_result(tmp_path, no_leak):
    write_npy(tmp_path)
    rep, stdout, _ = run(small_spec(tmp_path, data=NPY, verify="false"), 0)
    res = rep["result"]
    assert res["check"] == "off" and res["verified"] is None
    assert "nonfinite" not in res  # the data was not scanned
    assert res["value_nonfinite"] == 1
    assert (
        "non-finite values: the result is nan; not verified (verify: false: the data was not scanned)"
        " (on_nonfinite: fail would fail the run)"
    ) in rep["warnings"]
    assert "  result: sum = nan, not verified; the result is not finite\n" in stdout
    rep, _, _ = run(small_spec(tmp_path, "f", data=NPY, verify="false", on_nonfinite="fail"), 1)
    assert rep["status"] == "failed"
    assert rep["error"] == "non-finite values (on_nonfinite: fail): the result is nan"


def test_a_kernel_returning_nan_from_finite_data_is_not_verified(tmp_path, no_leak):
    spec = small_spec(tmp_path, kernel="nan_kernels:log_sum")  # standard normal data: half of it negative
    (tmp_path / "nan_kernels.py").write_text(NAN_KERNELS)
    rep, stdout, _ = run(spec, 0)
    res = rep["result"]
    assert math.isnan(res["value"]) and res["verified"] is None and res["check"] == "not meaningful"
    assert res["nonfinite"] == {"nan": 0, "posinf": 0, "neginf": 0}
    why = "the result is nan, as in the reference, from finite data; a comparison with a reference means nothing"
    assert res["detail"] == why
    assert f"  result: nan_kernels:log_sum = nan, NOT VERIFIED: {why}\n" in stdout


def test_min_over_data_with_inf_is_a_real_check_and_still_warns(tmp_path, no_leak):
    a = write_npy(tmp_path, nonfinite=False)
    a[42] = np.inf
    np.save(tmp_path / "x.npy", a)
    rep, stdout, _ = run(small_spec(tmp_path, data=NPY, kernel="min"), 0)
    res = rep["result"]
    assert res["value"] == float(a.min()) and res["verified"] is True and res["check"] == "ok"
    assert res["nonfinite"] == {"nan": 0, "posinf": 1, "neginf": 0}
    assert (
        "non-finite values: the data has 1 +inf value (of 300,000); value and reference are finite and agree"
        " (on_nonfinite: fail would fail the run)"
    ) in rep["warnings"]
    assert ", verified (abs error 0, " in stdout


def test_on_nonfinite_takes_warn_or_fail(tmp_path):
    out = run_cli("validate", str(small_spec(tmp_path, on_nonfinite="ignore")), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert (
        f"{tmp_path / 't.yaml'}: on_nonfinite: Input should be 'warn' or 'fail' (got 'ignore'); allowed: " in lines[0]
    )
