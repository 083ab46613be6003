"""Shared test helpers: run the CLI as a user would, and make sure nothing is left in /dev/shm."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
SHM = Path("/dev/shm")


def our_segments() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith("shmhpc-")} if SHM.is_dir() else set()


def _leaked(before: set[str]) -> list[str]:
    """New segments whose owner is gone, or is this test process itself.

    A segment whose owner is another live process belongs to a run in progress
    (another test session on a shared machine), not to a leak of ours.
    """
    from shmhpc.shm import parse_segment_name

    out = []
    for name in sorted(our_segments() - before):
        owner = parse_segment_name(name)
        if owner is None or owner.pid == os.getpid() or not _alive(owner.pid):
            out.append(name)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session", autouse=True)
def _no_saved_ceiling(tmp_path_factory):
    """Runs report a share of ``shmhpc bench --save``'s ceiling when one is saved: not the developer's here."""
    os.environ["SHMHPC_CEILING_DIR"] = str(tmp_path_factory.mktemp("ceiling"))


@pytest.fixture(scope="session", autouse=True)
def _no_segment_left_after_suite():
    before = our_segments()
    yield
    leaked = _leaked(before)
    assert not leaked, f"the test suite left shared-memory segments behind: {leaked}"


@pytest.fixture
def no_leak():
    """Fail the test if it leaves a segment of ours in /dev/shm."""
    before = our_segments()
    yield
    leaked = _leaked(before)
    assert not leaked, f"segments left behind: {leaked}"


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 120):
    """``python -m shmhpc ARGS`` in a subprocess; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.pop("SHMHPC_SYSFS_ROOT", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "shmhpc", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, cwd: str | Path, env: dict | None = None, stderr: Path | None = None) -> subprocess.Popen:
    """``python -m shmhpc ARGS`` started in the background (to signal or kill it mid-run).

    Its stderr goes to a pipe, or to the file ``stderr``, where a test can poll the progress lines while it runs.
    """
    with open(stderr, "w") if stderr is not None else contextlib.nullcontext() as err:
        return subprocess.Popen(
            [sys.executable, "-m", "shmhpc", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if err is None else err,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# -- a small job and kernels that misbehave, for the end-to-end tests ---------------------------

USABLE = sorted(os.sched_getaffinity(0))
TWO = len(USABLE) >= 2

BAD_KERNELS = """
import os, signal, time
import numpy as np

def boom(chunk):
    if chunk.size and chunk.reshape(-1)[0] != 12345:  # every chunk
        raise ValueError("boom from the kernel")
    return 0.0

def die(chunk):
    os.kill(os.getpid(), signal.SIGKILL)

def sleepy(chunk):
    time.sleep(30)
    return 0.0

def slow(chunk):
    time.sleep(0.2)
    return float(np.sum(chunk, dtype=np.float64))

def inconsistent(chunk):
    # Not a map-reduce: the sum of squared chunk sizes differs from the whole array's.
    return float(chunk.size) ** 2
"""


def small_spec(tmp_path: Path, name: str = "t", **fields) -> Path:
    """A small generated job in ``tmp_path`` (2 workers where 2 CPUs are usable), ``bad_kernels.py`` beside it.

    ``fields`` override top-level spec keys as YAML text; the report goes to ``tmp_path/reports/NAME.json``.
    """
    body = {
        "name": name,
        "data": "{source: generate, size: 300000, dtype: float32, seed: 3}",
        "workers": 2 if TWO else 1,
        "repeats": 3,
        "warmup": 1,
        "report": f"{tmp_path}/reports/{{name}}.json",
    }
    body.update(fields)
    text = "\n".join(f"{k}: {v}" for k, v in body.items()) + "\n"
    (tmp_path / "bad_kernels.py").write_text(BAD_KERNELS)
    return write_spec(tmp_path / f"{name}.yaml", text)


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (root only: CI runs as root; elsewhere the test is skipped, saying why)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def run_in_pty(args: list[str], cwd: str | Path, timeout: float = 60) -> tuple[int, str]:
    """``python -m shmhpc ARGS`` with stderr on a pseudo-terminal (as a user at a terminal sees it)."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "shmhpc", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=timeout)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


# -- every run report the suite writes must match `shmhpc schema --report` ---------------------

VALIDATED_REPORTS: list[Path] = []  # how many were checked, so a test can see the check really runs


@functools.cache
def _report_validator():
    import jsonschema

    from shmhpc.report_model import report_json_schema

    schema = report_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_reports_under(root: Path) -> int:
    """Validate every run report under ``root`` against the report schema; returns how many.

    A run report is what ``shmhpc run`` writes: an object with ``version``, ``job``, ``status`` and
    ``report_path`` (a sweep summary has ``kind``). Hand-made reports in tests, some malformed on
    purpose, have no ``report_path``; ``tests/test_report_model.py`` checks the helper that makes them.
    """
    n = 0
    for path in sorted(Path(root).rglob("*.json")):
        if path.is_symlink() or not path.is_file():  # FIFOs and links made by the write-target tests
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            not isinstance(data, dict)
            or "kind" in data
            or not {"version", "job", "status", "report_path"} <= data.keys()
        ):
            continue
        import jsonschema

        err = jsonschema.exceptions.best_match(_report_validator().iter_errors(data))  # the deepest, not the anyOf
        assert err is None, (
            f"{path} does not match `shmhpc schema --report`: "
            f"{'.'.join(map(str, err.absolute_path)) or '(top)'}: {err.message}"
        )
        VALIDATED_REPORTS.append(path)
        n += 1
    return n


@pytest.fixture(autouse=True)
def _reports_validate_against_schema(request):
    """After each test that has a ``tmp_path``, check the run reports written there (cheap: a few small files)."""
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is not None:
        validate_reports_under(tmp)
