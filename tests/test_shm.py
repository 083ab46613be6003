"""The shared segment: creation mode, names, attach without ownership, clean unlink."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from shmhpc.errors import RunError
from shmhpc.shm import Segment, parse_segment_name


def test_create_is_private_and_named_after_owner(no_leak):
    seg = Segment.create(1 << 16)
    try:
        st = os.stat(seg.path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        owner = parse_segment_name(seg.name)
        assert owner is not None and owner.pid == os.getpid() and owner.uid == os.getuid()
        assert st.st_size == 1 << 16
    finally:
        seg.close()
        seg.unlink()
    assert not os.path.exists(seg.path)


def test_names_are_unguessable(no_leak):
    names = set()
    for _ in range(20):
        with Segment.create(4096) as seg:
            names.add(seg.name)
    assert len(names) == 20


def test_parse_rejects_foreign_names():
    assert parse_segment_name("psm_1234") is None
    assert parse_segment_name("shmhpc-u0-p1-j0-xyz") is None


def test_attach_sees_writes_and_cannot_unlink(no_leak):
    with Segment.create(8 * 1000) as seg:
        a = seg.array("float64", (1000,))
        a[:] = np.arange(1000)
        other = Segment.attach(seg.name, 8 * 1000)
        b = other.array("float64", (1000,))
        assert b.sum() == a.sum()
        with pytest.raises(RunError):
            other.unlink()
        del a, b
        other.close()


def test_attach_checks_size(no_leak):
    with Segment.create(4096) as seg, pytest.raises(RunError, match="expected 8192"):
        Segment.attach(seg.name, 8192)


def test_populate_faults_in_exactly_the_whole_pages_of_its_range(no_leak):
    """True: every page inside the range is present and none after it; False (no MADV_POPULATE_WRITE): none."""
    from shmhpc.numa import available, page_nodes
    from shmhpc.shm import PAGE

    half = 1 << 21  # a multiple of any page size, so a huge page, if tmpfs gives one, stays in its half
    with Segment.create(2 * half) as seg:
        if not available():
            pytest.skip("move_pages not available on this platform")
        assert page_nodes(seg.address(), 2 * half, 256) == {"absent": 256}
        # a range holding no whole page touches nothing
        assert seg.populate(1, PAGE) is True
        assert page_nodes(seg.address(), 2 * PAGE, 2) == {"absent": 2}
        populated = seg.populate(0, half)
        first = page_nodes(seg.address(), half, 128)
        second = page_nodes(seg.address() + half, half, 128)
        assert second == {"absent": 128}, "pages past the range are left alone"
        if populated:
            assert first is not None and "absent" not in first and "error" not in first, first
        else:
            assert first == {"absent": 128}, "False means nothing was faulted in"


def test_attach_in_child_leaves_no_tracker_warning(no_leak):
    """A child that attaches and exits must neither unlink the segment nor warn about leaks."""
    with Segment.create(4096) as seg:
        code = (
            "from shmhpc.shm import Segment\n"
            f"s = Segment.attach({seg.name!r}, 4096)\n"
            "a = s.array('uint8', (4096,)); a[:] = 7; del a; s.close()\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stderr == ""
        assert os.path.exists(seg.path)
        assert (seg.array("uint8", (4096,)) == 7).all()


def test_reserve_falls_back_to_fallocate(no_leak, monkeypatch):
    """Kernels without MADV_POPULATE_WRITE still get the pages reserved up front."""
    with Segment.create(1 << 20) as seg:
        monkeypatch.setattr(seg, "populate", lambda offset, length: False)
        assert seg.reserve(0, 1 << 20) == "posix_fallocate"
        assert os.stat(seg.path).st_blocks * 512 >= 1 << 20


def test_owner_holds_the_liveness_lock_until_unlink(no_leak):
    """The launcher's lock is what the sweep tests: held from create until the name is gone; attach takes none."""
    import fcntl

    from shmhpc.shm import check_segments

    with Segment.create(4096) as seg:
        other = Segment.attach(seg.name, 4096)
        other.close()
        probe = os.open(seg.path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        [check] = [c for c in check_segments() if c.name == seg.name]
        assert not check.stale and "in use" in check.reason
    assert seg._lock_fd == -1, "unlink released the lock"


def test_a_sigkilled_creators_segment_is_stale(tmp_path):
    """The kernel drops the lock of a process killed with SIGKILL: its segment is found stale and removed."""
    from shmhpc.shm import check_segments, remove_stale

    code = (
        "import sys\nfrom shmhpc.shm import Segment\nprint(Segment.create(4096).name, flush=True)\nsys.stdin.read()\n"
    )
    env = {**os.environ, "SHMHPC_SHM_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().decode().strip()
        [live] = check_segments(str(tmp_path))
        assert live.name == name and not live.stale
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    [dead] = check_segments(str(tmp_path))
    assert dead.stale and f"owner pid {proc.pid} is not running here" in dead.reason
    assert remove_stale([dead]) == [dead] and not (tmp_path / name).exists()
