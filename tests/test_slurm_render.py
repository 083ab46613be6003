"""Rendering sbatch scripts (pure, no Slurm needed): golden files, quoting, resources, errors.

Golden files live in tests/golden/slurm/, one per template × job in jobs/; regenerate them after a
deliberate template change with ``SHMHPC_UPDATE_GOLDEN=1 python -m pytest tests/test_slurm_render.py``
and read the diff. Every rendered script is also checked by ``bash -n``; the quoting tests read the
values back the way sbatch (for ``#SBATCH`` lines) and bash (for the settings) do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write_spec

from shmhpc.errors import SpecError
from shmhpc.slurm import (
    COMPANION,
    TEMPLATES,
    NodeInfo,
    array_configs,
    quote_directive,
    read_template,
    render,
    resolve_resources,
    template_dir,
)
from shmhpc.spec import load_spec

GOLDEN = ROOT / "tests" / "golden" / "slurm"
JOBS = sorted(p.name for p in (ROOT / "jobs").glob("*.yaml"))
# A partition like a small cluster's, for jobs whose CPU count only a node can tell (workers: auto).
NODE = NodeInfo(partition="batch", nodes=4, cpus=8, threads_per_core=2, source="test partition")
BASH = shutil.which("bash")
# A PATH without Slurm's commands: rendering must not depend on the cluster a test happens to run near.
NO_SLURM = {"PATH": str(Path(sys.executable).parent)}


def _render(job: str, template: str, **kw):
    spec = load_spec(ROOT / "jobs" / job)
    configs = []
    if template == "compare-array":
        configs = array_configs(spec, kw.pop("array_of", []), lambda extra: load_spec(ROOT / "jobs" / job, extra))
    res, _notes = resolve_resources(spec, template, kw.pop("node", NODE), configs)
    return render(spec, f"jobs/{job}", template, res, python="python3", configs=configs, **kw)


def settings_block(text: str) -> str:
    """The lines between the settings markers of a rendered script."""
    return text.split("# >>> shmhpc settings", 1)[1].split("\n", 1)[1].split("# <<< shmhpc settings", 1)[0]


def bash_n(text: str) -> None:
    done = subprocess.run([BASH, "-n"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# -- golden files -----------------------------------------------------------------------------


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("job", JOBS)
def test_golden(job, template):
    rendered = _render(job, template)
    text = "".join(f"# ==> {s.template}.sbatch <==\n{s.text}" for s in rendered.scripts)
    for s in rendered.scripts:
        bash_n(s.text)
    path = GOLDEN / f"{job.removesuffix('.yaml')}.{template}.sbatch"
    if os.environ.get("SHMHPC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"no golden file {path}; run with SHMHPC_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"render of {job} with {template} differs from {path}"


def test_every_golden_file_has_a_job_and_a_template():
    expected = {f"{j.removesuffix('.yaml')}.{t}.sbatch" for j in JOBS for t in TEMPLATES}
    assert {p.name for p in GOLDEN.glob("*.sbatch")} == expected


@pytest.mark.parametrize("name", [*TEMPLATES, *COMPANION.values()])
def test_templates_as_shipped_are_valid_scripts(name):
    """A user submits them by hand: they must parse, and their #SBATCH lines must come before any command."""
    text = read_template(name)
    bash_n(text)
    lines = text.splitlines()
    first_cmd = next(i for i, x in enumerate(lines) if x.strip() and not x.startswith("#"))
    assert all(not x.startswith("#SBATCH") for x in lines[first_cmd:]), "sbatch stops reading at the first command"
    assert "# >>> shmhpc settings" in text and "# <<< shmhpc settings" in text


def test_pinned_script_says_what_a_batch_user_needs():
    text = _render("sum-pinned.yaml", "pinned").scripts[0].text
    assert "#SBATCH --cpus-per-task=2 " in text  # 2 workers × 1 thread
    assert re.search(r"^srun .*--cpu-bind=none -c \"\$SLURM_CPUS_PER_TASK\"", text, re.M)
    assert "#SBATCH --signal=B:USR1@120 " in text
    assert re.search(r"^\s+\"\$PYTHON\" -m shmhpc run .* &$", text, re.M)
    assert 'wait "$pid"' in text and "trap 'kill -USR1" in text and "trap 'kill -TERM" in text
    assert "REPORT='reports/{name}-{pinning}-{slurm_job}.json'" in text
    assert "#SBATCH --output=sum-pinned-%j.out " in text
    assert "##SBATCH --exclusive" in text and "##SBATCH --hint=nomultithread" in text
    assert "export OMP_NUM_THREADS=$THREADS" in text


def test_unpinned_is_the_same_allocation_with_pinning_none():
    pinned = _render("sum-pinned.yaml", "pinned").scripts[0].text
    unpinned = _render("sum-pinned.yaml", "unpinned")
    text = unpinned.scripts[0].text
    assert "SET=(--set pinning=none)" in text
    cpt = [re.search(r"--cpus-per-task=(\d+)", t).group(1) for t in (pinned, text)]
    assert cpt[0] == cpt[1] == "2"
    assert unpinned.reports == ["reports/sum-pinned-none-{slurm_job}.json"]


def test_options_switch_on_and_off():
    spec = load_spec(
        ROOT / "jobs" / "sum-pinned.yaml",
        values={
            "slurm.exclusive": True,
            "slurm.nomultithread": True,
            "slurm.signal_lead_s": 0,
            "slurm.mem": "8G",
            "slurm.account": "proj",
            "slurm.qos": "high",
            "slurm.time": 90,
            "slurm.extra": ["--constraint=skylake", "--requeue"],
        },
    )
    res, _ = resolve_resources(spec, "pinned", None)
    text = render(spec, "jobs/sum-pinned.yaml", "pinned", res, python="python3").scripts[0].text
    directives = [x for x in text.splitlines() if x.startswith("#SBATCH")]
    assert any(x.startswith("#SBATCH --exclusive") for x in directives)
    assert any(x.startswith("#SBATCH --hint=nomultithread") for x in directives)
    assert any(x.startswith("#SBATCH --mem=8G") for x in directives)
    assert "#SBATCH --account=proj" in directives and "#SBATCH --qos=high" in directives
    assert "#SBATCH --time=90" in directives
    assert not any("--signal" in x for x in directives), "signal_lead_s: 0 means no warning signal"
    assert "##SBATCH --signal=B:USR1@120 " in text  # the template's line, turned off
    assert directives[-2:] == ["#SBATCH --constraint=skylake", "#SBATCH --requeue"]
    bash_n(text)


def test_compare_array_has_one_task_per_configuration_and_a_companion():
    r = _render("sum-pinned.yaml", "compare-array", array_of=["pinning=none,compact,scatter", "workers=1,2"])
    array, cmp = r.scripts
    assert [s.template for s in r.scripts] == ["compare-array", "compare-reports"]
    assert "#SBATCH --array=0-5 " in array.text
    assert "PER_TASK=2 " in array.text
    assert [c.label for c in r.configs] == ["none/1", "none/2", "compact/1", "compact/2", "scatter/1", "scatter/2"]
    assert "TASKS=6 " in cmp.text and "LABELS=(none/1 none/2 compact/1 compact/2 scatter/1 scatter/2)" in cmp.text
    assert array.log == "sum-pinned-%A_%a.out" and cmp.log == "sum-pinned-compare-%j.out"
    # the largest configuration decides the allocation of every task
    assert r.resources.cpus_per_task == 2
    # task i really gets configuration i: run the selection code of the script with bash
    block = settings_block(array.text)
    pick = array.text.split("task=${SLURM_ARRAY_TASK_ID", 1)[1].split("\n", 1)[1].split("# Same reasons", 1)[0]
    for i, c in enumerate(r.configs):
        script = f"set -eu\n{block}\ntask={i}\n{pick}\nprintf 'arg:%s\\n' \"${{SET[@]}}\""
        out = subprocess.run([BASH, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
        assert [x[4:] for x in out if x.startswith("arg:") and x != "arg:--set"] == list(c.overrides)


def test_compare_array_default_is_unpinned_then_the_spec_policy():
    r = _render("histogram.yaml", "compare-array")
    assert [c.overrides for c in r.configs] == [("pinning=none",), ("pinning=scatter",)]


def test_array_throttle():
    spec = load_spec(ROOT / "jobs" / "sum-pinned.yaml", values={"slurm.array_throttle": 1})
    configs = array_configs(spec, [], lambda extra: load_spec(ROOT / "jobs" / "sum-pinned.yaml", extra))
    res, _ = resolve_resources(spec, "compare-array", None, configs)
    text = render(spec, "jobs/sum-pinned.yaml", "compare-array", res, python="python3", configs=configs).scripts[0].text
    assert "#SBATCH --array=0-1%1 " in text


def test_multinode_has_one_launcher_per_node():
    spec = load_spec(ROOT / "jobs" / "sum-pinned.yaml", values={"slurm.nodes": 4})
    res, _ = resolve_resources(spec, "multinode", NODE)
    text = render(spec, "jobs/sum-pinned.yaml", "multinode", res, python="python3").scripts[0].text
    assert "#SBATCH --nodes=4" in text and "#SBATCH --ntasks-per-node=1 " in text
    assert re.search(r"^srun --ntasks-per-node=1 --cpu-bind=none -c \"\$SLURM_CPUS_PER_TASK\"", text, re.M)
    assert "--mpi" in text
    bash_n(text)


# -- quoting: hostile values stay one value ---------------------------------------------------

HOSTILE = [
    "we ird $x; 'q' \"dq\" #h",
    'a\\b"c d',
    "$(touch /tmp/shmhpc-pwned)",
    "`id`;rm -rf ~",
    "-x --partition=other",
]


def sbatch_value(line: str) -> str:
    """Read an #SBATCH option's value the way sbatch does: bare, or double-quoted with \\ escapes."""
    value = line.split("=", 1)[1]
    if not value.startswith('"'):
        return value.split()[0]
    out, i = [], 1
    while value[i] != '"':
        if value[i] == "\\":
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_cannot_change_the_script(tmp_path, hostile):
    d = tmp_path / hostile.replace("/", "_")
    d.mkdir()
    spec_path = write_spec(d / "job.yaml", "name: j\ndata: {size: 1000}\nworkers: 1\n")
    values = {
        "slurm.job_name": hostile,
        "slurm.partition": hostile,
        "slurm.account": hostile,
        "slurm.log_dir": hostile.replace("%", ""),
        "slurm.extra": [f"--comment={hostile}"],
    }
    spec = load_spec(spec_path, ["pinning=compact"], values)
    res, _ = resolve_resources(spec, "pinned", None)
    text = render(spec, str(spec_path), "pinned", res, python=str(d / "py thon")).scripts[0].text
    bash_n(text)
    directives = {x.split("=", 1)[0].split()[1]: x for x in text.splitlines() if x.startswith("#SBATCH --")}
    for opt in ("--job-name", "--partition", "--account", "--comment"):
        assert sbatch_value(directives[opt]) == hostile, opt
    assert sbatch_value(directives["--output"]) == f"{hostile.replace('%', '')}/j-%j.out"
    # the settings, read back by bash itself
    script = settings_block(text) + '\nprintf "%s\\n" "$SPEC" "$PYTHON"'
    out = subprocess.run([BASH, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.split("\n")[:2] == [str(spec_path), str(d / "py thon")]
    assert not Path("/tmp/shmhpc-pwned").exists()


def test_quote_directive_plain_values_stay_bare():
    assert quote_directive("debug") == "debug"
    assert quote_directive("B:USR1@120") == "B:USR1@120"
    assert quote_directive("a b") == '"a b"'


def test_control_characters_are_refused(tmp_path):
    spec_path = write_spec(tmp_path / "job.yaml", "name: j\ndata: {size: 1000}\n")
    with pytest.raises(SpecError, match=r"slurm.job_name: control characters \(0x0a\)"):
        load_spec(spec_path, values={"slurm.job_name": "a\n#SBATCH --exclusive"})


# -- resources --------------------------------------------------------------------------------


def test_cpus_from_the_plan_the_spec_or_the_node():
    pinned = load_spec(ROOT / "jobs" / "sum-pinned.yaml", ["threads_per_worker=2"])
    assert resolve_resources(pinned, "pinned", None)[0].cpus_per_task == 4
    auto = load_spec(ROOT / "jobs" / "matrix-2d.yaml")
    res, _ = resolve_resources(auto, "pinned", NODE)
    assert res.cpus_per_task == 8 and "partition batch" in res.cpus_source
    given = load_spec(ROOT / "jobs" / "matrix-2d.yaml", values={"slurm.cpus_per_task": 3})
    assert resolve_resources(given, "pinned", None)[0].cpus_per_task == 3


@pytest.mark.parametrize(
    ("job", "overrides", "values", "node", "message"),
    [
        ("matrix-2d.yaml", [], {}, None, "slurm.cpus_per_task: workers: auto needs the CPUs of one node"),
        ("sum-pinned.yaml", ["pinning='N:0-1'"], {}, None, "pinning 'N:0-1' needs the CPUs"),
        (
            "sum-pinned.yaml",
            ["workers=4"],
            {"slurm.cpus_per_task": 2},
            None,
            "2 is fewer than the 4 CPUs the plan pins",
        ),
        ("sum-pinned.yaml", ["workers=16"], {}, NODE, "16 CPUs is more than a node of partition batch has (8"),
        ("sum-pinned.yaml", [], {"slurm.nodes": 2}, None, "template pinned runs on one node"),
        ("sum-pinned.yaml", [], {"slurm.array_throttle": 2}, None, "only for --template compare-array"),
    ],
)
def test_what_the_template_cannot_satisfy(job, overrides, values, node, message):
    spec = load_spec(ROOT / "jobs" / job, overrides, values)
    with pytest.raises(SpecError) as exc:
        resolve_resources(spec, "pinned", node)
    assert any(message in m for m in exc.value.messages), exc.value.messages


def test_explicit_cpu_lists_get_a_note():
    spec = load_spec(ROOT / "jobs" / "sum-pinned.yaml", ["pinning=[[0],[1]]"])
    res, notes = resolve_resources(spec, "pinned", None)
    assert res.cpus_per_task == 2 and any("--exclusive" in n for n in notes)


# -- the command line -------------------------------------------------------------------------


def render_cli(tmp_path, *args: str):
    """``shmhpc slurm render jobs/sum-pinned.yaml ARGS`` where no Slurm can be asked."""
    return run_cli("slurm", "render", str(ROOT / "jobs" / "sum-pinned.yaml"), *args, cwd=tmp_path, env=NO_SLURM)


def test_cli_render_prints_a_script(tmp_path):
    out = render_cli(tmp_path, "--time", "1:30:00", "--partition", "a b", "--python", "python3")
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --time=1:30:00" in out.stdout  # unquoted YAML would have made this 5400 minutes
    assert '#SBATCH --partition="a b"' in out.stdout
    bash_n(out.stdout)


def test_cli_render_writes_files(tmp_path):
    out = render_cli(tmp_path, "--template", "compare-array", "-o", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sum-pinned-compare-array.sbatch",
        "sum-pinned-compare-reports.sbatch",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "nope"], "invalid choice: 'nope'"),
        (["--time", "1:3:4:5"], "slurm.time: not a Slurm time"),
        (["--nodes", "0"], "slurm.nodes: Input should be greater than 0"),
        (["--mem", "lots"], "slurm.mem: not a Slurm memory size"),
        (["--array-of", "pinning=none,compact"], "--array-of: only for --template compare-array"),
        (["--template", "compare-array", "--array-of", "workers=0,1"], "--array-of workers=0: workers:"),
        (["--template", "compare-array", "--array-of", "workers=2"], "needs at least two configurations"),
        (["--signal-lead-s", "120", "--time", "2"], "slurm.signal_lead_s: 120 s is not before the end"),
        (["--extra=constraint=x"], "slurm.extra[0]: 'constraint=x' is not an sbatch option"),
        (["--log-dir", "logs/%j"], "slurm.log_dir: '%' is sbatch's pattern character"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = render_cli(tmp_path, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_submit_without_slurm_says_so(tmp_path):
    out = run_cli("slurm", "submit", str(ROOT / "jobs" / "sum-pinned.yaml"), cwd=tmp_path, env=NO_SLURM)
    assert out.returncode == 2
    assert "sbatch and scontrol are not on PATH" in out.stderr


# -- shipped inside the wheel -----------------------------------------------------------------


def test_the_wheel_ships_the_same_templates(tmp_path):
    """An installed shmhpc finds its templates, and they are byte for byte the ones in slurm/."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in this environment")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("shmhpc-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name: z.read(n) for n in z.namelist() if n.startswith("shmhpc/templates/")}
        z.extractall(tmp_path / "site")
    in_repo = {p.name: p.read_bytes() for p in (ROOT / "slurm").glob("*.sbatch")}
    assert shipped == in_repo
    # the installed copy is the one an installed shmhpc reads
    code = "from shmhpc.slurm import template_dir; print(template_dir())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert Path(out.stdout.strip()) == tmp_path / "site" / "shmhpc" / "templates"


def test_a_checkout_reads_slurm_folder():
    assert template_dir() in (ROOT / "slurm", Path(sys.modules["shmhpc"].__file__).parent / "templates")
