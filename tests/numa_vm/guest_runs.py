"""Runs a list of shmhpc jobs in one Python process, inside the NUMA test guest (tests/test_numa_vm.py).

Python starts in seconds under software emulation (numpy, pydantic): one interpreter for every run
keeps a guest within a minute or two. Each job is exactly what ``python -m shmhpc ARGS`` does
(``shmhpc.cli.main``), with its stdout/stderr in NAME.out/NAME.err and its exit status in NAME.rc.

    python guest_runs.py JOBS.json

JOBS.json is a list of objects, run in order:

* ``{"name": N, "argv": [...]}`` — one CLI command;
* ``{"name": N, "numa_maps": SPEC}`` — runs SPEC with the session API and, while its workers are
  alive, writes N.json: each worker's sampled page counts (``move_pages``, as the report has them)
  next to the page counts the kernel lists for the segment in ``/proc/<pid>/numa_maps``;
* ``{"deny": [syscall, ...]}`` — from here on those system calls fail with EPERM in this process
  and its workers (a seccomp filter, as a container's profile would; it cannot be lifted, so it
  comes last).
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: deny_syscall

import deny_syscall  # noqa: E402

from shmhpc.cli import main  # noqa: E402


def numa_maps_counts(pid: int, path: str) -> dict[str, object]:
    """Pages per node and the policies of every mapping of ``path`` in ``/proc/PID/numa_maps``."""
    counts: dict[str, int] = {}
    policies = []
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            if f"file={path} " not in line + " ":
                continue
            fields = line.split()
            policies.append(fields[1])
            for m in re.finditer(r"\bN(\d+)=(\d+)", line):
                counts[m.group(1)] = counts.get(m.group(1), 0) + int(m.group(2))
    return {"pages_by_node": counts, "policies": policies}


def run_numa_maps(name: str, spec_path: str) -> int:
    from shmhpc.numa_policy import judge
    from shmhpc.planning import prepare
    from shmhpc.session import RunSession
    from shmhpc.spec import load_spec
    from shmhpc.topology import read_topology

    spec = load_spec(spec_path)
    prep = prepare(spec, read_topology(), os.path.dirname(os.path.abspath(spec_path)))
    with RunSession(prep) as session:
        hello = session.start()
        loads = session.load()
        assert session.segment is not None
        path = session.segment.path
        workers = [
            {"rank": h["rank"], "pid": h["pid"], "sampled": ld["pages"], **numa_maps_counts(h["pid"], path)}
            for h, ld in zip(hello, loads)
        ]
        placement = judge(
            prep.plan, spec.numa, prep.topology, loads, session.numa_applied, session.numa_notes,
            [h.get("numa_policy") for h in hello],
        )  # fmt: skip
    Path(f"{name}.json").write_text(json.dumps({"workers": workers, "placement": placement}, indent=1))
    return 0


def main_(jobs_file: str) -> int:
    for job in json.loads(Path(jobs_file).read_text()):
        if "deny" in job:
            audit, numbers = deny_syscall.ARCHES[os.uname().machine]
            deny_syscall.install(deny_syscall.build_filter(audit, [numbers[s] for s in job["deny"]], errno.EPERM))
            continue
        name = job["name"]
        t0 = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        out = os.open(f"{name}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(f"{name}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        try:
            rc = run_numa_maps(name, job["numa_maps"]) if "numa_maps" in job else main(job["argv"])
        except BaseException as exc:  # a crash is a result too: the test shows it
            import traceback

            traceback.print_exc()
            rc = 99 if not isinstance(exc, SystemExit) else int(exc.code or 0)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (out, err, *saved):
                os.close(fd)
        Path(f"{name}.rc").write_text(f"{rc}\n")
        print(f"{name}: exit {rc} in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_(sys.argv[1]))
