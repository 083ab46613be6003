"""``python -m shmhpc validate / schema`` and ``run`` on bad input, as a user runs them.

Each test runs the CLI in a subprocess from a fresh temporary directory: exit code,
one ``error: PATH: field: ...`` line per problem on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shmhpc.cli import build_parser, main
from shmhpc.shm import parse_segment_name

ROOT = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
TIMEOUT_S = 60

GOOD = {
    "gen.yaml": "name: gen\ndata: {size: 1000}\nworkers: 1\npinning: none\nrepeats: 1\n",
    "compact.yaml": "name: compact\ndata: {shape: [100, 4], dtype: float64}\nworkers: 1\npinning: compact\n",
    "sub/npy.yaml": "name: npy\ndata: {source: npy, path: arr.npy}\nworkers: 1\npinning: [[0]]\nkernel: max\n",
}

# Each bad spec and the fields its problems name, in any order.
BAD = {
    "bad-fields.yaml": (
        "name: bad name\ndata: {size: -1}\nworkerz: 2\nrepeats: 0\nstart_method: thread\n",
        ["name", "data.size", "workerz", "repeats", "start_method"],
    ),
    "bad-data.yaml": (
        "name: raw-job\ndata: {source: raw}\npinning: [[0, 'x'], '3-1']\n",
        ["data.path", "data.dtype", "data.size", "pinning[0][1]", "pinning[1]"],
    ),
}

LINE = re.compile(r"^error: (?P<path>[^:]+): (?P<field>[\w.\[\]']+): (?P<what>.+)$")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SHMHPC_SYSFS_ROOT", None)  # the real machine, unless a test says otherwise
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def shmhpc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmhpc", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def write_all(tmp_path: Path, files: dict[str, str]) -> list[str]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return list(files)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def test_validate_good_specs_print_ok_each(tmp_path: Path) -> None:
    paths = write_all(tmp_path, GOOD)
    np.save(tmp_path / "sub" / "arr.npy", np.arange(64, dtype=np.float32))  # relative to its spec
    proc = shmhpc("validate", *paths, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{p}: ok" for p in paths]
    assert proc.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact.yaml", "gen.yaml", "sub"], "validate wrote files"


def test_validate_example_jobs_schema_only(tmp_path: Path) -> None:
    jobs = sorted(str(p) for p in (ROOT / "jobs").glob("*.yaml"))
    assert jobs
    proc = shmhpc("validate", "--schema-only", *jobs, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{p}: ok" for p in jobs]


def test_validate_bad_specs_one_line_per_problem(tmp_path: Path) -> None:
    write_all(tmp_path, {name: text for name, (text, _) in BAD.items()})
    write_all(tmp_path, {"gen.yaml": GOOD["gen.yaml"]})
    proc = shmhpc("validate", *BAD, "gen.yaml", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 2
    # the good spec after the bad ones is still checked
    assert proc.stdout.splitlines() == ["gen.yaml: ok"]
    lines = proc.stderr.splitlines()
    assert len(lines) == sum(len(fields) for _, fields in BAD.values()), proc.stderr
    found: dict[str, list[str]] = {}
    for line in lines:
        m = LINE.match(line)
        assert m, f"not 'error: PATH: field: ...': {line!r}"
        found.setdefault(m["path"], []).append(m["field"])
    assert {path: sorted(fields) for path, fields in found.items()} == {
        path: sorted(fields) for path, (_, fields) in BAD.items()
    }


UNREADABLE: dict[str, tuple[str | bytes | None, str]] = {
    "missing.yaml": (None, "no such file"),
    "empty.yaml": ("", "empty spec"),
    "list.yaml": ("- 1\n- 2\n", "top level must be a mapping"),
    "binary.yaml": (b"\xff\xfe\x00\x01" * 64, "not UTF-8"),
    "broken.yaml": ("name: [oops\n", "not valid YAML"),
    "bomb.yaml": ("a: &a [1, 1]\nb: [*a, *a]\n", "anchors/aliases are not allowed"),
    "dup.yaml": ("name: a\nname: b\n", "duplicate key"),
    "adir": ("DIR", "is a directory"),
    "huge.yaml": ("#" * (1 << 20) + "\nname: x\n", "over 1048576 bytes"),
}


def test_validate_unreadable_specs(tmp_path: Path) -> None:
    for name, (content, _) in UNREADABLE.items():
        p = tmp_path / name
        if content == "DIR":
            p.mkdir()
        elif isinstance(content, bytes):
            p.write_bytes(content)
        elif content is not None:
            p.write_text(content, encoding="utf-8")
    proc = shmhpc("validate", *UNREADABLE, cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == len(UNREADABLE), proc.stderr  # one line each, and every file is tried
    for line, (name, (_, expected)) in zip(lines, UNREADABLE.items()):
        assert line.startswith(f"error: {name}: "), line
        assert expected in line, line


def test_validate_cpu_the_machine_does_not_have(tmp_path: Path) -> None:
    write_all(tmp_path, {"cpu.yaml": "name: cpu\ndata: {size: 1000}\npinning: [[0], [4096]]\n"})
    proc = shmhpc("validate", "cpu.yaml", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: cpu.yaml: pinning[1]: "), line
    assert "4096" in line
    # The spec itself is fine: --schema-only does not look at the machine.
    proc = shmhpc("validate", "--schema-only", "cpu.yaml", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["cpu.yaml: ok"]


def test_validate_with_overrides(tmp_path: Path) -> None:
    write_all(tmp_path, {"gen.yaml": GOOD["gen.yaml"]})
    proc = shmhpc(
        "validate",
        "--schema-only",
        "--set",
        "workers=0",
        "--set",
        "data.sise=5",
        "--set",
        "foo",
        "gen.yaml",
        cwd=tmp_path,
    )
    no_traceback(proc)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()  # a malformed --set is reported before anything else
    assert line.startswith("error: gen.yaml: --set: 'foo' is not key=value")
    proc = shmhpc("validate", "--schema-only", "--set", "workers=0", "--set", "data.sise=5", "gen.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert sorted(LINE.match(line)["field"] for line in proc.stderr.splitlines()) == ["data.sise", "workers"]  # type: ignore[index]


def test_schema_prints_json_schema(tmp_path: Path) -> None:
    proc = shmhpc("schema", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "data" in schema["properties"]
    assert "pinning" in schema["properties"]


def _segments_of(pid: int) -> list[str]:
    if not SHM.is_dir():
        return []
    out = []
    for p in SHM.iterdir():
        owner = parse_segment_name(p.name)
        if owner is not None and owner.pid == pid:
            out.append(p.name)
    return out


@pytest.mark.parametrize(
    ("text", "files_after"),
    [
        # an invalid spec stops before anything exists, report included
        ("name: bad name\ndata: {size: -1}\nworkerz: 2\n", ["bad.yaml"]),
        # a valid spec that cannot be placed here fails in the runner, which records it in a report
        ("name: big\ndata: {size: 1000}\npinning: [[0], [4096]]\n", ["bad.yaml", "reports"]),
    ],
    ids=["bad-spec", "bad-placement"],
)
def test_run_bad_spec_exits_2_and_creates_nothing(tmp_path: Path, text: str, files_after: list[str]) -> None:
    write_all(tmp_path, {"bad.yaml": text})
    with subprocess.Popen(
        [sys.executable, "-m", "shmhpc", "run", "bad.yaml", "-q"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        stdout, stderr = child.communicate(timeout=TIMEOUT_S)
    proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines
    assert all(line.startswith("error: ") for line in lines), lines
    assert _segments_of(child.pid) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == files_after


# -- absurd numbers at every numeric entry point ---------------------------------------------------

D5000 = "1" * 5000  # more digits than Python's int() converts (4300)
JOB = "name: job\ndata: {size: 1000}\nworkers: 1\npinning: none\nrepeats: 1\n"
NO_SLURM = {"PATH": str(Path(sys.executable).parent)}  # render checks nothing against a real cluster


def one_error(proc: subprocess.CompletedProcess[str], start: str, short: bool = True) -> str:
    no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(start), line
    assert not short or len(line) < 400, "the 5000-digit value is shortened"
    return line


def test_a_5000_digit_number_in_a_spec_or_set_is_one_line(tmp_path: Path) -> None:
    write_all(tmp_path, {"big.yaml": f"name: big\ndata: {{size: {D5000}}}\n", "job.yaml": JOB})
    one_error(shmhpc("validate", "big.yaml", cwd=tmp_path), "error: big.yaml: data.size: a number of 5000 characters")
    for cmd in ("validate", "run", "plan"):
        proc = shmhpc(cmd, "job.yaml", "--set", f"data.size={D5000}", cwd=tmp_path)
        one_error(proc, f"error: {'job.yaml: ' if cmd == 'validate' else ''}data.size: a number of 5000 characters")
    proc = shmhpc("validate", "job.yaml", "--set", "timeout_s=1e400", cwd=tmp_path)
    one_error(proc, "error: job.yaml: timeout_s: Input should be")


def test_exponent_numbers_are_accepted_in_specs_and_set(tmp_path: Path) -> None:
    write_all(tmp_path, {"sci.yaml": "name: sci\ndata: {size: 1e3}\nworkers: 1e0\npinning: none\ntimeout_s: 1e-9\n"})
    proc = shmhpc("validate", "sci.yaml", "--set", "repeats=2e0", "--set", "data.size=2.5E3", cwd=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    proc = shmhpc("validate", "sci.yaml", "--set", "data.size=2.5e-1", cwd=tmp_path)
    one_error(proc, "error: sci.yaml: data.size: must be a whole number (got 2.5e-1)")


def _render(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    write_all(tmp_path, {"job.yaml": JOB})
    return subprocess.run(
        [sys.executable, "-m", "shmhpc", "slurm", "render", "job.yaml", *args],
        cwd=tmp_path,
        env={**_env(), **NO_SLURM},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--cpus-per-task", D5000], "error: slurm.cpus_per_task: a number of 5000 characters is out of range"),
        (["--cpus-per-task", "1e5"], "error: slurm.cpus_per_task: Input should be less than or equal to 65536"),
        (["--cpus-per-task", "2.5"], "error: slurm.cpus_per_task: must be a whole number (got 2.5)"),
        (["--cpus-per-task", "many"], "error: slurm.cpus_per_task: Input should be a valid integer (got 'many')"),
        (["--nodes", "1e20"], "error: slurm.nodes: Input should be less than or equal to 2147483647"),
        (["--signal-lead-s", D5000], "error: slurm.signal_lead_s: a number of 5000 characters is out of range"),
        (["--time", "99999999999999999999:00"], "error: slurm.time: over Slurm's limit of 2147483647 minutes"),
        (["--mem", "99999999999999999999T"], "error: slurm.mem: over Slurm's limit of 2147483647 MB per node"),
        (
            ["--template", "compare-array", "--array-throttle", "1e10"],
            "error: slurm.array_throttle: Input should be less than or equal to 2147483647",
        ),
        (["--set", f"slurm.nodes={D5000}"], "error: slurm.nodes: a number of 5000 characters is out of range"),
    ],
)
def test_slurm_render_numeric_flags_are_one_line_errors(tmp_path: Path, args: list[str], start: str) -> None:
    one_error(_render(tmp_path, *args), start)


def test_slurm_render_array_of_with_a_5000_digit_value(tmp_path: Path) -> None:
    proc = _render(tmp_path, "--template", "compare-array", "--array-of", f"workers=1,{D5000}")
    line = one_error(proc, "error: --array-of workers=", short=False)  # the prefix quotes the combination
    assert ": workers: a number of 5000 characters is out of range" in line


def test_slurm_render_accepts_exponent_numbers(tmp_path: Path) -> None:
    proc = _render(tmp_path, "--cpus-per-task", "4e0", "--nodes", "1e0", "--signal-lead-s", "6e1")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --cpus-per-task=4 " in proc.stdout and "--signal=B:USR1@60" in proc.stdout


def test_sweep_vary_with_a_5000_digit_value(tmp_path: Path) -> None:
    write_all(tmp_path, {"job.yaml": JOB})
    proc = shmhpc("sweep", "job.yaml", "--vary", f"workers=1,{D5000}", "--out", "sw", "-q", cwd=tmp_path)
    line = one_error(proc, "error: --vary workers=")
    assert ": workers: a number of 5000 characters is out of range" in line


# -- --help of every command and argument ------------------------------------------------------------


def without_help(parser: argparse.ArgumentParser, path: str = "shmhpc") -> list[str]:
    """Every command without help or description, every argument (but -h) without help."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not (helps.get(name) or "").strip():
                    missing.append(f"{path} {name}: no help")
                if not (sub.description or "").strip():
                    missing.append(f"{path} {name}: no description")
                missing += without_help(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
    return missing


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*path, name))
    return out


def test_every_command_and_argument_says_what_it_does() -> None:
    parser = build_parser()
    assert without_help(parser) == []
    commands = {" ".join(c) for c in _commands(parser)}
    assert {"run", "plan", "validate", "compare", "sweep", "plot", "slurm render", "slurm submit"} <= commands
    # The check notices an argument or a command added without saying what it does.
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verbs = next(a for a in subs.choices["slurm"]._actions if isinstance(a, argparse._SubParsersAction))
    verbs.choices["render"].add_argument("--new-flag")
    subs.add_parser("new-command").add_argument("thing")
    assert sorted(without_help(parser)) == [
        "shmhpc new-command thing: no help",
        "shmhpc new-command: no description",
        "shmhpc new-command: no help",
        "shmhpc slurm render --new-flag: no help",
    ]


@pytest.mark.parametrize("command", [" ".join(c) for c in _commands(build_parser())])
def test_help_of_every_command_prints(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command.split(), "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: shmhpc {command}".rstrip())
