"""A command pays only for what it needs: the CLI's entry, `--help` and `clean` never build the spec or
report models (pydantic) and the entry does not load numpy. Which modules load is asserted, not how long."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import runpy, sys
sys.argv = ["shmhpc", *{args!r}]
try:
    runpy.run_module("shmhpc", run_name="__main__")
except SystemExit:
    pass
names = ("pydantic", "numpy", "yaml", "psutil", "shmhpc.report_model", "shmhpc.spec")
heavy = sorted(m for m in names if m in sys.modules)
print("LOADED", ",".join(heavy))
"""


def _loaded(*args: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], capture_output=True, text=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOADED"))
    return {m for m in line.split(" ", 1)[1].split(",") if m}


def test_importing_the_cli_loads_nothing_heavy():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, shmhpc.cli; print(sorted(m for m in ('pydantic', 'numpy') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["slurm", "render", "--help"]])
def test_help_builds_no_model(args):
    assert not _loaded(*args) & {"pydantic", "shmhpc.spec", "shmhpc.report_model", "numpy"}


def test_clean_builds_no_model(tmp_path):
    assert not _loaded("clean", "--dry-run", "--shm-dir", str(tmp_path)) & {"pydantic", "shmhpc.spec"}


def test_public_names_still_import_on_use():
    import shmhpc

    assert shmhpc.JobSpec.__name__ == "JobSpec" and shmhpc.RunReport.__name__ == "RunReport"
    assert callable(shmhpc.read_topology) and callable(shmhpc.run_job)
    with pytest.raises(AttributeError):
        _ = shmhpc.no_such_name
