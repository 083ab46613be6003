"""``python -m shmhpc plan`` and ``python -m shmhpc topology``, run as a user would, against fake sysfs trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakesys import build_sysfs, memory_only_node, two_socket_smt

from shmhpc.cpulist import format_cpulist


def shmhpc(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shmhpc ARGS``; ``$SHMHPC_SYSFS_ROOT`` only when ``env`` sets it."""
    full_env = {k: v for k, v in os.environ.items() if k != "SHMHPC_SYSFS_ROOT"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "shmhpc", *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_socket_smt(tmp_path_factory.mktemp("sysfs") / "two_socket_smt")


def write_spec(tmp_path: Path, body: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text("name: t\ndata: {size: 1000000}\n" + body)
    return path


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def test_plan_json(tmp_path: Path, tree: Path) -> None:
    spec = write_spec(tmp_path, "workers: 4\npinning: scatter\nchunks_per_worker: 3\n")
    out = ok_json(shmhpc("plan", spec, "--sysfs-root", tree, "--json"))
    assert out["job"] == "t"
    assert out["policy"] == "scatter"
    assert out["pinned"] is True
    assert out["n_rows"] == 1_000_000
    assert out["row_bytes"] == 4  # float32 by default
    assert out["usable_cpus"] == list(range(16))
    workers = out["workers"]
    assert [w["rank"] for w in workers] == [0, 1, 2, 3]
    assert [w["cpus"] for w in workers] == [[0], [4], [1], [5]]
    assert [w["node"] for w in workers] == [0, 1, 0, 1]
    for w in workers:
        assert _is_int_list(w["cpus"])
        assert _is_int_list(w["rows"])
        assert len(w["chunks"]) == 3
        assert all(_is_int_list(c) and len(c) == 2 for c in w["chunks"])
        assert w["chunks"][0][0] == w["rows"][0]
        assert w["chunks"][-1][1] == w["rows"][1]
    parts = out["partitions"]
    assert [p["node"] for p in parts] == [0, 1]
    assert [p["ranks"] for p in parts] == [[0, 2], [1, 3]]
    assert parts[0]["start"] == 0
    assert parts[0]["stop"] == parts[1]["start"]
    assert parts[1]["stop"] == 1_000_000
    assert parts[1]["start"] % 1024 == 0  # page-aligned for 4-byte rows
    assert abs(parts[0]["stop"] - 500_000) <= 1024
    assert all(_is_int_list([p["start"], p["stop"]]) for p in parts)


def test_plan_table(tmp_path: Path, tree: Path) -> None:
    spec = write_spec(tmp_path, "workers: 2\nthreads_per_worker: 5\npinning: N:0-3@N:8@S1:0-4\n")
    proc = shmhpc("plan", spec, "--sysfs-root", tree)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"plan for t ({spec}):"
    assert lines[1].startswith("2 workers × 5 threads, pinning N:0-3@N:8@S1:0-4, 1,000,000 rows × 4 B = 4.0 MB")
    assert lines[2] == "usable CPUs: 0-15 (all online CPUs of the sysfs root)"
    assert lines[3].split() == ["rank", "cpus", "node", "rows", "chunks"]
    assert lines[4].split()[:3] == ["0", "0-3,8", "0"]
    assert lines[5].split()[:3] == ["1", "4-7,12", "1"]
    assert lines[6].startswith("partition node 0: rows 0-")
    assert lines[7].startswith("partition node 1: rows ")
    assert (
        lines[8] == "memory: first-touch (each owner writes its rows first), written by the owners, numa.verify report"
    )


def test_allowed_cpus_flag(tmp_path: Path, tree: Path) -> None:
    spec = write_spec(tmp_path, "pinning: compact\n")  # workers: auto
    out = ok_json(shmhpc("plan", spec, "--sysfs-root", tree, "--allowed-cpus", "4-7", "--json"))
    assert out["usable_cpus"] == [4, 5, 6, 7]
    assert out["usable_source"] == "override"
    assert [w["cpus"] for w in out["workers"]] == [[4], [5], [6], [7]]
    assert [p["node"] for p in out["partitions"]] == [1]


def test_env_var_instead_of_flag(tmp_path: Path, tree: Path) -> None:
    spec = write_spec(tmp_path, "workers: 3\npinning: compact\n")
    by_flag = ok_json(shmhpc("plan", spec, "--sysfs-root", tree, "--json"))
    by_env = ok_json(shmhpc("plan", spec, "--json", env={"SHMHPC_SYSFS_ROOT": str(tree)}))
    assert by_env == by_flag
    assert [w["cpus"] for w in by_env["workers"]] == [[0], [1], [2]]


def test_topology_json(tree: Path) -> None:
    out = ok_json(shmhpc("topology", "--sysfs-root", tree, "--json"))
    assert out["online"] == list(range(16))
    assert out["usable"] == list(range(16))
    assert out["packages"] == [0, 1]
    assert out["physical_cores"] == 8
    assert [(n["id"], n["cpus"]) for n in out["nodes"]] == [
        (0, [0, 1, 2, 3, 8, 9, 10, 11]),
        (1, [4, 5, 6, 7, 12, 13, 14, 15]),
    ]
    assert {c["id"]: c["siblings"] for c in out["cpus"]}[9] == [1, 9]
    assert ok_json(shmhpc("topology", "--json", env={"SHMHPC_SYSFS_ROOT": str(tree)})) == out


def test_topology_human(tree: Path, tmp_path: Path) -> None:
    proc = shmhpc("topology", "--sysfs-root", tree, "--allowed-cpus", "0-3,8")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"sysfs root: {tree}" in text
    assert "16 online CPUs (0-15), 8 physical cores, 2 package(s), 2 NUMA node(s)" in text
    assert "usable CPUs: 0-3,8 (override), 4 physical cores" in text
    assert "node 0: CPUs 0-3,8-11" in text
    assert "node 1: CPUs 4-7,12-15" in text
    assert "SMT siblings: 0,8 1,9 2,10 3,11" in text
    memory_only = memory_only_node(tmp_path / "mem")
    proc = shmhpc("topology", "--sysfs-root", memory_only)
    assert proc.returncode == 0, proc.stderr
    assert "node 2: CPUs none (memory only), memory 64.0 GiB" in proc.stdout


def test_topology_shows_the_node_distances(tree: Path, tmp_path: Path) -> None:
    """The firmware's SLIT as the kernel gives it (nodeN/distance): in --json and as a table."""
    out = ok_json(shmhpc("topology", "--sysfs-root", tree, "--json"))
    assert out["numa_distances"] == {"nodes": [0, 1], "matrix": [[10, 21], [21, 10]]}
    assert [n["distances"] for n in out["nodes"]] == [[10, 21], [21, 10]]
    snc = build_sysfs(
        tmp_path / "snc",
        cores={c: (0, c) for c in range(8)},
        nodes={0: [0, 1, 2, 3], 1: [4, 5, 6, 7], 3: []},  # ids need not be contiguous; node 3: memory only
        distances={0: [10, 12, 31], 1: [12, 10, 31], 3: [31, 31, 10]},
    )
    proc = shmhpc("topology", "--sysfs-root", snc)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("node distances (10: local; from the firmware's SLIT):\n", 1)[1].splitlines()[:4]
    assert [line.split() for line in table] == [
        ["0", "1", "3"],
        ["0", "10", "12", "31"],
        ["1", "12", "10", "31"],
        ["3", "31", "31", "10"],
    ]
    (snc / "devices/system/node/node1/distance").write_text("12 10\n")  # one value short: not trusted
    out = ok_json(shmhpc("topology", "--sysfs-root", snc, "--json"))
    assert out["numa_distances"] is None and out["nodes"][1]["distances"] is None
    assert "node 1: distance '12 10' does not give one number per node (3); ignored" in out["notes"]
    assert "node distances" not in shmhpc("topology", "--sysfs-root", snc).stdout


def test_bad_placement_exits_2_with_one_line(tmp_path: Path, tree: Path) -> None:
    spec = write_spec(tmp_path, "pinning: [[0], [99]]\n")
    for extra in ([], ["--json"]):
        proc = shmhpc("plan", spec, "--sysfs-root", tree, *extra)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.splitlines() == ["error: pinning[1]: cpu 99 is not usable here; usable CPUs: 0-15"]
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("body", "prefix"),
    [
        ("workers: 17\n", "error: workers: 17 workers × 1 threads need 17 CPUs"),
        ("pinning: S5:0\n", "error: pinning: socket S5 does not exist"),
        ("workers: 4\ndata: {size: 3}\n", "error: data: 3 rows cannot be shared by 4 workers"),
    ],
)
def test_other_placement_errors(tmp_path: Path, tree: Path, body: str, prefix: str) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text("name: t\n" + body + ("" if "data:" in body else "data: {size: 1000000}\n"))
    proc = shmhpc("plan", spec, "--sysfs-root", tree)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(prefix)
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or not Path("/sys/devices/system/cpu/online").is_file(),
    reason="needs Linux /sys and sched_getaffinity",
)
def test_plan_on_this_machine(tmp_path: Path) -> None:
    affinity = sorted(os.sched_getaffinity(0))
    spec = write_spec(tmp_path, "workers: 1\npinning: compact\n")
    out = ok_json(shmhpc("plan", spec, "--json"))
    assert out["usable_cpus"] == affinity
    assert "affinity" in out["usable_source"]
    assert len(out["workers"]) == 1
    assert set(out["workers"][0]["cpus"]) <= set(affinity)
    spec = write_spec(tmp_path, "workers: 1\npinning: none\n", name="none.yaml")
    proc = shmhpc("plan", spec)
    assert proc.returncode == 0, proc.stderr
    assert f"usable CPUs: {format_cpulist(affinity)} (" in proc.stdout


def test_plan_shows_the_mbind_ranges_of_a_policy(tmp_path: Path, tree: Path) -> None:
    spec = write_spec(tmp_path, "workers: 4\npinning: scatter\nnuma: {placement: bind, verify: strict}\n")
    proc = shmhpc("plan", spec, "--sysfs-root", tree)
    assert proc.returncode == 0, proc.stderr
    tail = proc.stdout.splitlines()[-3:]
    assert (
        tail[0] == "memory: bind (mbind(MPOL_BIND) before any page exists), written by the owners, numa.verify strict"
    )
    assert tail[1].startswith("  bytes 0-") and tail[1].endswith(": bind to node 0")
    assert tail[2].endswith(": bind to node 1")
    out = json.loads(shmhpc("plan", spec, "--sysfs-root", tree, "--json").stdout)
    numa = out["numa"]
    assert (numa["placement"], numa["writer"], numa["verify"]) == ("bind", "owners", "strict")
    first, second = numa["ranges"]
    assert first["offset"] == 0 and first["offset"] + first["length"] == second["offset"]
    assert second["offset"] % numa["page_bytes"] == 0 and (first["nodes"], second["nodes"]) == ([0], [1])
    assert second["offset"] == out["partitions"][1]["start"] * 4  # the partitions' page-aligned boundary
