"""Huge pages for the shared segment (``huge_pages: auto | require | off``).

First the parsers, on fake /proc and sysfs files. Then real runs through the CLI on a hugetlbfs with a
small reserved pool: root only (CI runs as root), skipped elsewhere saying why. The hugetlbfs is mounted
in a private mount namespace (``unshare``; each command enters it with ``nsenter``), so runs of other test
sessions on this machine never see it; without those tools it is mounted here and unmounted after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import load_json, small_spec
from fakesys import build_sysfs

from shmhpc.hugepages import (
    SegmentPages,
    choose,
    filesystem_of,
    hugetlbfs_paths,
    measured,
    pages_needed,
    parse_hugepagesize,
    parse_mounts,
    parse_smaps,
    pool_pages,
)
from shmhpc.placement import plan_job
from shmhpc.shm import parse_segment_name
from shmhpc.topology import read_topology

MiB = 1 << 20
HUGE = 2 * MiB

# -- parsing, on fake files ------------------------------------------------------------------------------

MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0
none /mnt/huge\\0401g hugetlbfs rw,relatime,pagesize=1024M 0 0
none /mnt/plain hugetlbfs rw,relatime 0 0
hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0
"""
MEMINFO = "MemTotal:       32768000 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n"


def test_mounts_give_each_hugetlbfs_once_with_its_page_size():
    assert parse_hugepagesize(MEMINFO) == HUGE and parse_hugepagesize("MemTotal: 1 kB\n") is None
    mounts = parse_mounts(MOUNTS, HUGE)
    assert [(m.path, m.page_bytes) for m in mounts] == [
        ("/dev/hugepages", HUGE),
        ("/mnt/huge 1g", 1 << 30),  # /proc/mounts writes a space as \040
        ("/mnt/plain", HUGE),  # no pagesize=: the default size
    ]
    assert parse_mounts("x /mnt/plain hugetlbfs rw 0 0", None) == [], "no page size known: not usable"
    assert hugetlbfs_paths(MOUNTS) == ["/dev/hugepages", "/mnt/huge 1g", "/mnt/plain"]


def test_the_filesystem_of_a_path_is_its_longest_mount_point():
    assert filesystem_of("/dev/shm", MOUNTS) == "tmpfs"
    assert filesystem_of("/dev/hugepages", MOUNTS) == "hugetlbfs"
    assert filesystem_of("/sys/kernel", MOUNTS) == "sysfs"
    assert filesystem_of("/etc", MOUNTS) is None  # no mount of "/" in this text


def _fake_machine(tmp_path: Path, mounts: str, pools: dict[int, tuple[int, int, int]], thp: str = "never"):
    """(proc root, sys root): ``pools`` maps a page size to (nr, free, resv) huge pages."""
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir(parents=True)
    (proc / "mounts").write_text(mounts)
    (proc / "meminfo").write_text(MEMINFO)
    for page, (nr, free, resv) in pools.items():
        d = sys_root / "kernel" / "mm" / "hugepages" / f"hugepages-{page >> 10}kB"
        d.mkdir(parents=True)
        for name, value in (("nr_hugepages", nr), ("free_hugepages", free), ("resv_hugepages", resv)):
            (d / name).write_text(f"{value}\n")
    thp_dir = sys_root / "kernel" / "mm" / "transparent_hugepage"
    thp_dir.mkdir(parents=True)
    modes = ["always", "within_size", "advise", "never", "deny", "force"]
    (thp_dir / "shmem_enabled").write_text(" ".join(f"[{m}]" if m == thp else m for m in modes) + "\n")
    (thp_dir / "hpage_pmd_size").write_text(f"{HUGE}\n")
    return proc, sys_root


def test_free_pages_leave_out_those_promised_to_mappings(tmp_path):
    _, sys_root = _fake_machine(tmp_path, "", {HUGE: (64, 50, 8)})
    assert pool_pages(sys_root, HUGE) == (42, 64)
    assert pool_pages(sys_root, 1 << 30) is None
    assert pages_needed(24_000_000, HUGE) == 12 + 1, "the data's pages and one for the control slots"
    assert pages_needed(HUGE, HUGE) == 2


def test_auto_takes_a_hugetlbfs_with_enough_free_pages(tmp_path):
    mnt = tmp_path / "huge"
    mnt.mkdir()
    proc, sys_root = _fake_machine(tmp_path, f"none {mnt} hugetlbfs rw,pagesize=2M 0 0\n", {HUGE: (64, 64, 0)})
    pages = choose("auto", 24_000_000, sys_root=sys_root, proc_root=proc)
    assert pages == SegmentPages("auto", str(mnt), HUGE)
    assert not pages.advise and pages.problem() is None


def test_the_mount_that_wastes_least_wins(tmp_path):
    small, big = tmp_path / "h2m", tmp_path / "h1g"
    small.mkdir()
    big.mkdir()
    mounts = f"none {big} hugetlbfs rw,pagesize=1G 0 0\nnone {small} hugetlbfs rw,pagesize=2M 0 0\n"
    proc, sys_root = _fake_machine(tmp_path, mounts, {HUGE: (600, 600, 0), 1 << 30: (4, 4, 0)})
    assert choose("auto", 1 << 30, sys_root=sys_root, proc_root=proc).hugetlbfs == str(small)
    proc2, sys2 = _fake_machine(tmp_path / "b", mounts, {HUGE: (10, 10, 0), 1 << 30: (4, 4, 0)})
    assert choose("auto", 1 << 30, sys_root=sys2, proc_root=proc2).hugetlbfs == str(big), "the 2 MiB pool is short"


def test_too_few_free_pages_fall_back_with_the_numbers_and_the_fix(tmp_path):
    mnt = tmp_path / "huge"
    mnt.mkdir()
    proc, sys_root = _fake_machine(tmp_path, f"none {mnt} hugetlbfs rw,pagesize=2M 0 0\n", {HUGE: (10, 5, 2)})
    pages = choose("require", 80 * MiB, sys_root=sys_root, proc_root=proc)
    assert pages.hugetlbfs is None and pages.page_bytes is None and pages.advise
    assert pages.fallback == (
        f"hugetlbfs {mnt} has 3 free 2 MiB pages, the segment needs 41; "
        "tmpfs gets no transparent huge pages: shmem_enabled=never"
    )
    assert pages.problem() == (
        f"huge_pages: require, but {pages.fallback}; reserve more as root: echo 48 > /proc/sys/vm/nr_hugepages, "
        "or set huge_pages: auto"
    )
    auto = choose("auto", 80 * MiB, sys_root=sys_root, proc_root=proc)
    assert auto.fallback == pages.fallback and auto.problem() is None, "auto only says why"


def test_no_hugetlbfs_says_how_to_reserve_and_mount_one(tmp_path):
    proc, sys_root = _fake_machine(tmp_path, MOUNTS.split("hugetlbfs /dev")[0], {HUGE: (0, 0, 0)}, thp="advise")
    pages = choose("require", 10 * MiB, sys_root=sys_root, proc_root=proc)
    assert pages.fallback == "no hugetlbfs mounted", "tmpfs may still get transparent huge pages (advise)"
    problem = pages.problem()
    assert problem is not None and "\n" not in problem
    assert "echo 6 > /proc/sys/vm/nr_hugepages" in problem and "mount -t hugetlbfs none /dev/hugepages" in problem


def test_off_is_base_pages_and_no_advice(tmp_path):
    pages = choose("off", 1 << 30, sys_root=tmp_path, proc_root=tmp_path)
    assert pages == SegmentPages("off", page_bytes=mmap.PAGESIZE)
    assert not pages.advise and pages.fallback is None and pages.problem() is None


SMAPS = """\
7f0000000000-7f0000200000 r--s 00000000 00:28 810654                     /dev/hugepages/shmhpc-x
Size:               2048 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
ShmemPmdMapped:        0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:    2048 kB
VmFlags: rd sh mr mw me ms de ht hg
7f0000200000-7f0000600000 rw-s 00200000 00:28 810654                     /dev/hugepages/shmhpc-x
Size:               4096 kB
KernelPageSize:     2048 kB
Rss:                   0 kB
Shared_Hugetlb:     4096 kB
Private_Hugetlb:       0 kB
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                1024 kB
"""


def test_smaps_of_a_hugetlbfs_mapping():
    start, stop = 0x7F0000000000, 0x7F0000600000
    got = parse_smaps(SMAPS, start, stop)  # the mapping split in two by mprotect; the heap after it is not ours
    assert got == {"kernel_page_bytes": HUGE, "mapped_bytes": 6 * MiB, "huge_bytes": 6 * MiB}
    assert parse_smaps(SMAPS, start, stop - 100) == got, "a segment's size need not be whole pages: its mapping is"
    assert parse_smaps(SMAPS, 0x1000, 0x2000) is None
    assert measured([got, None]) == {"page_bytes": HUGE, "huge_fraction": 1.0}


def test_measured_pages_on_tmpfs(tmp_path):
    _, sys_root = _fake_machine(tmp_path, "", {})
    base = {"kernel_page_bytes": mmap.PAGESIZE, "mapped_bytes": 8 * MiB, "huge_bytes": 0}
    thp = {"kernel_page_bytes": mmap.PAGESIZE, "mapped_bytes": 8 * MiB, "huge_bytes": 6 * MiB}
    assert measured([base, base], sys_root) == {"page_bytes": mmap.PAGESIZE, "huge_fraction": 0.0}
    assert measured([base, thp], sys_root) == {"page_bytes": HUGE, "huge_fraction": 0.375}
    assert measured([None]) == {"page_bytes": None, "huge_fraction": None}


def test_worker_boundaries_fall_on_the_hugetlbfs_page(tmp_path):
    """Under 2 MiB of data asks for no transparent huge pages, but a hugetlbfs file is huge pages anyway."""
    root = build_sysfs(tmp_path / "sys", cores={c: (0, c) for c in range(4)}, nodes={0: [0, 1, 2, 3]})
    topo = dataclasses.replace(read_topology(root), huge_page_bytes=None)
    job = {"pinning": "compact", "workers": 2, "threads_per_worker": 1, "topology": topo, "chunks_per_worker": 2}
    rows = 5 * HUGE // 8  # 10 MiB of float64
    on_huge = plan_job(**job, n_rows=rows, row_bytes=8, segment_page_bytes=HUGE)
    assert on_huge.align_bytes == HUGE
    assert all(w.rows[0] * 8 % HUGE == 0 for w in on_huge.workers)
    assert plan_job(**job, n_rows=rows, row_bytes=8).align_bytes == topo.page_bytes
    off = plan_job(**job, n_rows=rows, row_bytes=8, segment_page_bytes=topo.page_bytes)
    assert off.align_bytes == topo.page_bytes


def test_yaml_off_is_the_word_off(tmp_path):
    from shmhpc.spec import load_spec

    spec = small_spec(tmp_path, huge_pages="off")  # YAML 1.1 reads an unquoted off as false
    assert load_spec(spec).huge_pages == "off"
    assert load_spec(small_spec(tmp_path, "d")).huge_pages == "auto"


# -- real runs on a reserved pool --------------------------------------------------------------------------

POOL = 64  # 2 MiB pages: 128 MiB
KNOB = Path("/proc/sys/vm/nr_hugepages")
SYSFS_POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
DATA = "{source: generate, size: 3000000, dtype: float64, seed: 3}"  # 24 MB: 12 pages, and 1 for control
NEEDED = 13


def _pool() -> tuple[int, int]:
    """(free, total) 2 MiB pages."""
    return int((SYSFS_POOL / "free_hugepages").read_text()), int((SYSFS_POOL / "nr_hugepages").read_text())


def _set_pool(n: int) -> None:
    KNOB.write_text(f"{n}\n")


@dataclasses.dataclass
class Hugetlbfs:
    """A hugetlbfs at ``dir`` and how to run a command where it is mounted."""

    dir: Path
    prefix: list[str]

    def files(self) -> list[str]:
        return sorted(os.listdir(self.dir)) if not self.prefix else self.run_raw(["ls", "-A", str(self.dir)]).split()

    def run_raw(self, argv: list[str]) -> str:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True, check=True, timeout=30).stdout

    def argv(self, *args: str) -> list[str]:
        return [*self.prefix, sys.executable, "-m", "shmhpc", *args]

    def cli(self, *args: str, cwd: Path) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SHMHPC_SYSFS_ROOT"}
        return subprocess.run(self.argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def _mounted(path: Path) -> Iterator[list[str]]:
    """hugetlbfs at ``path`` in a private mount namespace (yields the nsenter prefix), else here (yields [])."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,mode=0700", "none", str(path)]
    holder = None
    if shutil.which("unshare") and shutil.which("nsenter"):
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and holder.poll() is None:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{holder.pid}/ns/mnt") != ours:
                    break
            time.sleep(0.01)
        prefix = ["nsenter", "-t", str(holder.pid), "-m", f"--wd={path.parent}", "--"]
        if holder.poll() is not None or subprocess.run([*prefix, *mount], capture_output=True).returncode != 0:
            holder.kill()
            holder.wait()
            holder = None
    if holder is None:
        prefix = []
        res = subprocess.run(mount, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a hugetlbfs here: {res.stderr.strip()}")
    try:
        yield prefix
    finally:
        if holder is not None:
            subprocess.run([*prefix, "umount", str(path)], check=False)
            holder.kill()
            holder.wait()
        else:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def hugetlbfs(tmp_path_factory) -> Iterator[Hugetlbfs]:
    """A pool of 64 reserved 2 MiB pages and a hugetlbfs on a temporary folder; the old pool size put back."""
    if os.geteuid() != 0:
        pytest.skip("needs root: reserves huge pages (/proc/sys/vm/nr_hugepages) and mounts a hugetlbfs")
    if parse_hugepagesize(Path("/proc/meminfo").read_text()) != HUGE or not SYSFS_POOL.is_dir():
        pytest.skip("the default huge page size here is not 2 MiB")
    old = KNOB.read_text().strip()
    try:
        _set_pool(int(old) + POOL)
    except OSError as exc:
        pytest.skip(f"cannot write {KNOB}: {exc.strerror}")
    try:
        if _pool()[0] < POOL:
            pytest.skip(f"the kernel reserved only {_pool()[0]} of {POOL} free 2 MiB pages (memory too fragmented?)")
        d = tmp_path_factory.mktemp("hugetlbfs") / "mnt"
        with _mounted(d) as prefix:
            yield Hugetlbfs(d, prefix)
    finally:
        KNOB.write_text(f"{old}\n")


@contextlib.contextmanager
def _no_pool() -> Iterator[None]:
    """No free huge pages for a while (the mount stays)."""
    before = _pool()[1]
    _set_pool(before - POOL)
    try:
        yield
    finally:
        _set_pool(before)


def _wait_for_pool(free: int, timeout_s: float = 10) -> None:
    """Huge pages come back when the last mapping goes (an orphaned worker may still be exiting)."""
    deadline = time.monotonic() + timeout_s
    while _pool()[0] < free and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pool()[0] >= free, f"huge pages still in use: {_pool()}"


def _report(spec: Path) -> dict:
    return load_json(spec.parent / "reports" / f"{spec.stem}.json")


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_a_run_gets_2_mib_pages_and_leaves_nothing(hugetlbfs, tmp_path, no_leak, mode):
    free = _pool()[0]
    spec = small_spec(tmp_path, data=DATA, huge_pages=mode)
    out = hugetlbfs.cli("run", str(spec), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = _report(spec)
    assert rep["status"] == "ok" and rep["result"]["verified"] is True
    seg = rep["segment"]
    assert seg["filesystem"] == "hugetlbfs" and seg["dir"] == str(hugetlbfs.dir) and seg["huge_pages"] == mode
    assert seg["page_bytes"] == HUGE, "measured in the workers' mappings, not assumed"
    assert seg["huge_fraction"] == 1.0 and seg["fallback"] is None
    assert seg["size_bytes"] == NEEDED * HUGE
    assert rep["plan"]["align_bytes"] == HUGE
    assert all(w["rows"][0] * 8 % HUGE == 0 for w in rep["workers"]), "each owner first-touches whole huge pages"
    assert all(w["reserved_by"] and w["pages"] for w in rep["workers"])
    assert f"segment: 2 MiB huge pages on hugetlbfs {hugetlbfs.dir}, huge_pages: {mode}" in out.stdout
    assert hugetlbfs.files() == []
    _wait_for_pool(free)


def _progress_reached(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in: {log.read_text()}"
        time.sleep(0.05)


def _start(hugetlbfs: Hugetlbfs, spec: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SHMHPC_SYSFS_ROOT"}
    with open(log, "w") as err:
        return subprocess.Popen(
            hugetlbfs.argv("run", str(spec)), cwd=spec.parent, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )


def test_clean_finds_a_sigkilled_launchers_segment_on_hugetlbfs(hugetlbfs, tmp_path, no_leak):
    free = _pool()[0]
    spec = small_spec(tmp_path, data=DATA, kernel="bad_kernels:slow", repeats=100)
    log = tmp_path / "stderr.txt"
    proc = _start(hugetlbfs, spec, log)
    try:
        _progress_reached(log, "warmup 1/1", proc)
        workers = psutil.Process(proc.pid).children(recursive=True)
        [name] = hugetlbfs.files()
        owner = parse_segment_name(name)
        assert owner is not None and owner.pid == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    deadline = time.monotonic() + 20  # orphaned workers see their launcher gone and exit
    while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        assert time.monotonic() < deadline, "orphaned workers did not exit"
        time.sleep(0.05)
    assert hugetlbfs.files() == [name], "SIGKILL leaves the segment behind: nothing can run in the launcher"
    path = hugetlbfs.dir / name
    dry = hugetlbfs.cli("clean", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and f"would remove {path} (" in dry.stdout, dry.stdout
    assert hugetlbfs.files() == [name]
    real = hugetlbfs.cli("clean", cwd=tmp_path)
    assert real.returncode == 0 and f"removed {path} (" in real.stdout and "nobody holds its lock" in real.stdout
    assert hugetlbfs.files() == []
    _wait_for_pool(free)


def test_a_failed_or_stopped_run_unlinks_its_hugetlbfs_segment(hugetlbfs, tmp_path, no_leak):
    free = _pool()[0]
    boom = small_spec(tmp_path, "boom", data=DATA, kernel="bad_kernels:boom")
    out = hugetlbfs.cli("run", str(boom), cwd=tmp_path)
    assert out.returncode == 1 and "boom from the kernel" in out.stderr, out.stderr
    assert _report(boom)["segment"]["filesystem"] == "hugetlbfs" and hugetlbfs.files() == []

    slow = small_spec(tmp_path, "slow", data=DATA, kernel="bad_kernels:slow", repeats=100)
    log = tmp_path / "slow.txt"
    proc = _start(hugetlbfs, slow, log)
    try:
        _progress_reached(log, "warmup 1/1", proc)
        assert len(hugetlbfs.files()) == 1
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, log.read_text()
    assert _report(slow)["status"] == "interrupted" and hugetlbfs.files() == []
    _wait_for_pool(free)


def test_require_without_free_pages_is_one_line_and_starts_nothing(hugetlbfs, tmp_path, no_leak):
    spec = small_spec(tmp_path, data=DATA, huge_pages="require")
    with _no_pool():
        out = hugetlbfs.cli("run", str(spec), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: huge_pages: require, but hugetlbfs {hugetlbfs.dir} has 0 free 2 MiB pages, the segment needs "
        f"{NEEDED}; " + errors[0].split(f"needs {NEEDED}; ", 1)[1]
    ], out.stderr
    assert "echo" in errors[0] and "/proc/sys/vm/nr_hugepages" in errors[0] and "or set huge_pages: auto" in errors[0]
    assert "Traceback" not in out.stderr
    rep = _report(spec)
    assert rep["status"] == "failed" and "workers" not in rep and not rep.get("segment")


def test_auto_without_free_pages_falls_back_and_says_why(hugetlbfs, tmp_path, no_leak):
    spec = small_spec(tmp_path, data=DATA)
    with _no_pool():
        out = hugetlbfs.cli("run", str(spec), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    seg = _report(spec)["segment"]
    assert seg["huge_pages"] == "auto" and seg["filesystem"] == "tmpfs" and seg["dir"] != str(hugetlbfs.dir)
    assert seg["fallback"].startswith(f"hugetlbfs {hugetlbfs.dir} has 0 free 2 MiB pages, the segment needs {NEEDED}")
    assert "huge_pages: auto fell back: hugetlbfs" in out.stdout
    if _shmem_thp() == "never":
        assert seg["page_bytes"] == mmap.PAGESIZE and seg["huge_fraction"] == 0.0
    assert hugetlbfs.files() == []


@pytest.mark.parametrize(
    "numa", ["{placement: bind, verify: strict}", "{placement: interleave, writer: launcher, verify: strict}"]
)
def test_memory_policies_on_huge_pages(hugetlbfs, tmp_path, no_leak, numa):
    """mbind on a hugetlbfs mapping needs huge-page boundaries, and the policy belongs to each process's
    mapping (hugetlbfs keeps no shared policy): the launcher's and every worker's mbind must hold."""
    free = _pool()[0]
    spec = small_spec(tmp_path, data=DATA, huge_pages="require", numa=numa)
    out = hugetlbfs.cli("run", str(spec), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = _report(spec)
    assert rep["segment"]["page_bytes"] == HUGE and rep["status"] == "ok"
    pl = rep["placement"]
    assert pl["applied"] is True and pl["reason"] is None and pl["passed"] is True, pl
    assert all(p["sampled"] > 0 and p["fraction_intended"] == 1.0 for p in pl["partitions"])
    _wait_for_pool(free)


def test_off_is_base_pages_in_dev_shm(hugetlbfs, tmp_path, no_leak):
    spec = small_spec(tmp_path, data=DATA, huge_pages="off")
    out = hugetlbfs.cli("run", str(spec), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rep = _report(spec)
    seg = rep["segment"]
    assert seg["huge_pages"] == "off" and seg["filesystem"] != "hugetlbfs" and seg["fallback"] is None
    if _shmem_thp() not in ("always", "force"):  # the kernel gives shared memory huge pages unasked
        assert seg["page_bytes"] == mmap.PAGESIZE
    assert rep["plan"]["align_bytes"] == mmap.PAGESIZE
    assert "segment:" not in out.stdout
    assert hugetlbfs.files() == []


RACE = """
import json, sys
from dataclasses import replace
from shmhpc.errors import SpecError
from shmhpc.planning import prepare
from shmhpc.session import RunSession
from shmhpc.spec import load_spec
from shmhpc.topology import read_topology

prep = prepare(load_spec(sys.argv[1]), read_topology())
# planned while the pool was free; taken before the segment is made
prep.pages = replace(prep.pages, hugetlbfs=sys.argv[2], page_bytes=2 << 20, fallback=None)
out = {}
with RunSession(prep) as session:
    out["auto"] = [session.segment.path, session.pages.fallback]
prep.pages = replace(prep.pages, mode="require")
try:
    RunSession(prep).__enter__()
except SpecError as exc:
    out["require"] = str(exc)
print(json.dumps(out))
"""


def test_a_pool_taken_after_planning_falls_back_or_refuses_at_creation(hugetlbfs, tmp_path, no_leak):
    spec = small_spec(tmp_path, data=DATA)
    with _no_pool():
        res = subprocess.run(
            [*hugetlbfs.prefix, sys.executable, "-c", RACE, str(spec), str(hugetlbfs.dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    path, why = out["auto"]
    assert not path.startswith(str(hugetlbfs.dir))
    assert why == f"cannot reserve {NEEDED} huge pages of 2 MiB on hugetlbfs {hugetlbfs.dir}: Cannot allocate memory"
    assert out["require"].startswith(f"huge_pages: require, but {why}; ")
    assert hugetlbfs.files() == []


def _shmem_thp() -> str | None:
    text = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
    if not text.exists():
        return None
    return text.read_text().split("[", 1)[-1].split("]", 1)[0]
