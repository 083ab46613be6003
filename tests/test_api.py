"""The Python API (``shmhpc.Session``) end to end: real pinned worker processes, real shared memory.

Scenarios that signal or kill processes, or need functions defined in ``__main__``, run as scripts in a
child Python (``_script``), as a notebook user's code would run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TWO, _leaked, load_json, our_segments, run_cli

import shmhpc
from shmhpc import RunError, SpecError

WORKERS = 2 if TWO else 1


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(2_000_000, dtype=np.float32)


def _script(tmp_path: Path, body: str, timeout: float = 120) -> dict:
    """Run ``body`` as ``__main__`` of a fresh Python; it prints one JSON line last, returned here."""
    path = tmp_path / "notebook.py"
    path.write_text(textwrap.dedent(body))
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=_env()
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_share_reduce_and_a_warm_second_call(x, no_leak):
    with shmhpc.Session(workers=WORKERS, pinning="compact") as s:
        a = s.share(x)
        assert a.shape == x.shape and a.dtype == np.float32 and a.nbytes == x.nbytes
        r = s.reduce(a, "sum")
        exact = float(np.sum(x, dtype=np.float64))
        assert r.verified is True and abs(r.value - exact) <= 1e-9 * np.abs(x).sum()
        assert r.report["status"] == "ok" and r.report["api"] == {"call": 1, "pids": a.pids, "pool_reused": False}
        assert r.timings["pool_start_s"] > 0 and r.timings["load_s"] > 0
        pl = r.report["placement"]  # only this process has x: it copies it, a policy places it
        assert pl["writer"] == "launcher" and pl["policy"] == "bind" and pl["passed"] is True
        pids = a.pids
        r2 = s.reduce(a, "var", accumulate="float64", repeats=5)
        assert a.pids == pids and r2.report["api"] == {"call": 2, "pids": pids, "pool_reused": True}
        assert "pool_start_s" not in r2.timings and "load_s" not in r2.timings, "no re-spawn, no re-copy"
        assert len(r2.timings["repeat_s"]) == 5 and r2.report["job"]["kernel"] == "var"
        assert r2.value == pytest.approx(float(np.var(x, dtype=np.float64)), rel=1e-12) and r2.verified
        assert "warm pool reused (call 2" in str(r2) and str(r2).startswith("session: ok")
        assert r2._repr_html_().startswith("<pre>session: ok")
    assert a.closed and a.pids == []


def test_map_with_a_lambda_and_an_object_kernel(x, no_leak):
    class MeanAbs:  # a map/combine/finalize class defined here, pickled by value
        def map(self, chunk):
            return (chunk.size, float(np.abs(chunk, dtype=np.float64).sum()))

        def combine(self, a, b):
            return (a[0] + b[0], a[1] + b[1])

        def finalize(self, state):
            return state[1] / state[0]

    threshold = 0.5  # a closure: the lambda carries it by value
    with shmhpc.Session(workers=WORKERS, chunks_per_worker=3) as s:
        a = s.share(x)
        m = s.map(a, lambda chunk: int((chunk > threshold).sum()))
        assert m.value == int((x > threshold).sum()) and m.verified is True
        assert m.report["job"]["kernel"] == "python:test_map_with_a_lambda_and_an_object_kernel.<locals>.<lambda>"
        o = s.reduce(a, MeanAbs)
        assert o.value == pytest.approx(float(np.abs(x, dtype=np.float64).mean()), rel=1e-9) and o.verified
        assert s.reduce(a, "max").value == float(x.max())


def test_share_a_npy_file_is_read_by_the_owners(tmp_path, x, no_leak):
    np.save(tmp_path / "x.npy", x)
    with shmhpc.Session(workers=WORKERS) as s:
        a = s.share(path=tmp_path / "x.npy")
        r = s.reduce(a)
        assert r.value == pytest.approx(float(np.sum(x, dtype=np.float64)), abs=1e-6) and r.verified
        assert r.report["data"]["source"] == "npy"
        assert r.report["placement"]["policy"] == "first-touch" and r.report["placement"]["writer"] == "owners"
        assert {w["reserved_by"] for w in r.report["workers"]} != {"launcher"}


def test_fill_an_empty_array_in_the_workers_and_fill_it_again(no_leak):
    def rows(block, start):
        block[:] = np.arange(start, start + len(block), dtype=np.float64)[:, None]

    with shmhpc.Session(workers=WORKERS) as s:
        e = s.share(shape=(10_000, 4), dtype="float64")
        assert s.reduce(e).value == 0.0  # zeros until filled
        per_worker = s.fill(e, rows)
        assert len(per_worker) == WORKERS and all(w["seconds"] >= 0 for w in per_worker)
        assert s.reduce(e).value == 4 * sum(range(10_000))
        s.fill(e, lambda block, start: block.fill(1.0))  # again, after a reduce made the mapping read-only
        assert s.reduce(e, "sum").value == 40_000.0
        with e.view() as arr:
            assert arr.shape == (10_000, 4) and not arr.flags.writeable and arr.sum() == 40_000.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: shmhpc.Session(workers=0), "workers: must be a positive integer or 'auto' (got 0)"),
        (lambda: shmhpc.Session(pinning="nowhere"), "pinning:"),
        (lambda: shmhpc.Session(numa={"placement": "spread"}), "numa.placement: Input should be"),
        (lambda: shmhpc.Session(data={"size": 3}), "Session: data is not a session field"),
    ],
)
def test_bad_fields_are_the_clis_one_line_errors(make, message):
    with pytest.raises(SpecError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_calls_are_one_line_errors(x, no_leak):
    with shmhpc.Session(workers=WORKERS) as s:
        a = s.share(x)
        with pytest.raises(SpecError, match=r"kernel: 'summ' is not a built-in kernel .*did you mean 'sum'\?"):
            s.reduce(a, "summ")
        with pytest.raises(SpecError, match=r"accumulate: Input should be 'float64' or 'native'"):
            s.reduce(a, "sum", accumulate="double")
        with pytest.raises(SpecError, match="share: the array has 3 dimensions"):
            s.share(np.zeros((2, 2, 2)))
        with pytest.raises(SpecError, match="share: dtype 'complex128' is not supported"):
            s.share(np.zeros(4, dtype=complex))
        with pytest.raises(RunError, match=r"failed during repeat .*ZeroDivisionError"):
            s.map(a, lambda chunk: 1 / 0)
        assert s.reduce(a, "sum").verified, "a failed call leaves the session usable"


def test_a_yaml_job_cannot_name_the_apis_sources(tmp_path):
    (tmp_path / "j.yaml").write_text("name: j\ndata: {source: array, size: 10, dtype: float32}\n")
    out = run_cli("validate", str(tmp_path / "j.yaml"))
    assert out.returncode == 2 and "data.source: 'array' is placed by shmhpc.Session.share in Python" in out.stderr


def test_from_spec_runs_the_yaml_job_and_shares_its_data(tmp_path, no_leak):
    (tmp_path / "job.yaml").write_text(
        "name: j\ndata: {source: generate, size: 1_000_000, seed: 4}\nworkers: 1\nrepeats: 2\nwarmup: 0\n"
    )
    s = shmhpc.Session.from_spec(tmp_path / "job.yaml")
    try:
        r = s.run()
        assert r.verified is True and r.report["job"]["name"] == "j"
        a = s.share()  # the spec's data
        assert s.reduce(a).value == pytest.approx(r.value, abs=1e-9)
    finally:
        s.close()


def test_a_saved_report_is_read_by_compare(tmp_path, x, no_leak):
    with shmhpc.Session(workers=WORKERS) as s:
        a = s.share(x)
        p1 = s.report(s.reduce(a, "sum", accumulate="native")).save(tmp_path / "native.json")
        p2 = s.reduce(a, "sum").save(tmp_path / "float64.json")
    assert load_json(p1)["job"]["accumulate"] == "native"
    out = run_cli("compare", str(p1), str(p2))
    assert out.returncode == 0, out.stderr
    assert "acc=native" in out.stdout and "acc=float64" in out.stdout


def test_callables_defined_in_main_work_with_every_start_method(tmp_path):
    got = _script(
        tmp_path,
        """
        import json, numpy as np, shmhpc

        def positives(chunk):
            return int((chunk > 0).sum())

        class Count:
            def map(self, chunk): return chunk.size
            def combine(self, a, b): return a + b
            def finalize(self, s): return s

        if __name__ == "__main__":
            x = np.random.default_rng(1).standard_normal(300_000)
            out = {}
            for method in ("fork", "forkserver", "spawn"):
                with shmhpc.Session(workers=2, start_method=method, oversubscribe=True) as s:
                    a = s.share(x)
                    out[method] = [s.map(a, positives).value, s.reduce(a, Count).value, a.pids != []]
            out["want"] = int((x > 0).sum())
            print(json.dumps(out))
        """,
    )
    for method in ("fork", "forkserver", "spawn"):
        assert got[method] == [got["want"], 300_000, True], method


def test_keyboard_interrupt_stops_the_round_and_the_session_goes_on(tmp_path):
    got = _script(
        tmp_path,
        """
        import json, os, signal, threading, time, numpy as np, shmhpc

        def slow(chunk):
            time.sleep(1.0)
            return float(chunk.sum(dtype=np.float64))

        if __name__ == "__main__":
            x = np.ones(200_000, dtype=np.float32)
            with shmhpc.Session(workers=2, oversubscribe=True, repeats=1, warmup=0) as s:
                a = s.share(x)
                before = a.pids
                threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
                t0 = time.perf_counter()
                try:
                    s.map(a, slow)
                    interrupted = False
                except KeyboardInterrupt:
                    interrupted = True
                waited = time.perf_counter() - t0
                stopped = a.pids == [] and not any(os.path.exists(f"/proc/{p}") for p in before)
                r = s.reduce(a, "sum")
                segs = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmhpc-u{os.getuid()}-p{os.getpid()}-")]
                out = {"interrupted": interrupted, "waited": waited, "stopped": stopped, "value": r.value,
                       "new_pids": a.pids != before and a.pids != [], "load_s": r.timings["load_s"],
                       "writes": r.report["timings"].get("launcher_write_s"), "segs": len(segs)}
            out["left"] = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmhpc-u{os.getuid()}-p{os.getpid()}-")]
            print(json.dumps(out))
        """,
    )
    assert got["interrupted"] and got["waited"] < 1.5 * 2 + 3, got  # not every chunk's second, and no hang
    assert got["stopped"] and got["new_pids"] and got["value"] == 200_000.0, got
    assert got["writes"] is None, "the restarted pool mapped the data: no second copy"
    assert got["segs"] == 1 and got["left"] == [], got


def test_a_dying_worker_fails_the_call_and_the_next_call_restarts_the_pool(tmp_path):
    got = _script(
        tmp_path,
        """
        import json, os, signal, numpy as np, shmhpc
        from shmhpc import RunError

        def die(chunk):
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            x = np.arange(100_000, dtype=np.float64)
            with shmhpc.Session(workers=2, oversubscribe=True) as s:
                a = s.share(x)
                try:
                    s.map(a, die)
                    err = None
                except RunError as exc:
                    err = str(exc)
                r = s.reduce(a, "sum")
                out = {"err": err, "value": r.value, "reused": r.report["api"]["pool_reused"]}
            out["left"] = [n for n in os.listdir("/dev/shm") if n.startswith(f"shmhpc-u{os.getuid()}-p{os.getpid()}-")]
            print(json.dumps(out))
        """,
    )
    assert got["err"] and "was killed by SIGKILL" in got["err"], got
    assert got["value"] == float(sum(range(100_000))) and got["reused"] is False and got["left"] == [], got


def test_interpreter_exit_removes_the_segments_and_a_killed_one_leaves_them_to_clean(tmp_path):
    before = our_segments()
    _script(
        tmp_path,
        """
        import json, numpy as np, shmhpc
        s = shmhpc.Session(workers=1)
        a = s.share(np.ones(1000))
        print(json.dumps({"pids": a.pids}))  # no close(): the interpreter's exit must do it
        """,
    )
    assert _leaked(before) == []
    path = tmp_path / "killed.py"
    path.write_text(
        "import os, numpy as np, shmhpc\n"
        "s = shmhpc.Session(workers=1)\n"
        "a = s.share(np.ones(1000))\n"
        "print(os.getpid(), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"  # a notebook kernel killed: nothing runs on the way out
    )
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == -9, out.stderr
    pid = out.stdout.split()[0]
    left = {n for n in our_segments() - before if f"-p{pid}-" in n}
    assert len(left) == 1, "the killed session's segment is still there"
    clean = run_cli("clean")
    assert clean.returncode == 0, clean.stderr
    assert not any(f"-p{pid}-" in n for n in our_segments()), clean.stdout


def test_the_seed_notebook_runs_and_prints_the_three_approaches(tmp_path):
    """examples/seed-notebook.py, executed as a user would (on a smaller array: same code path)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed-notebook.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**_env(), "SEED_ELEMENTS": "2000000"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout.split("\n\n")[0].splitlines()[2:]  # the table: after the title and the header
    rows = {}
    for line in table:
        name, rest = line.rsplit(" ms ", 1)
        rows[name.rsplit(None, 1)[0].strip()] = float(rest)
    assert set(rows) == {
        "np.sum (float32)",
        "np.sum (float64 accumulator)",
        f"ProcessPoolExecutor ({WORKERS if TWO else 1} workers)",
        f"shmhpc native ({WORKERS if TWO else 1} workers, warm)",
        f"shmhpc float64 ({WORKERS if TWO else 1} workers, warm)",
    }, out.stdout
    assert rows[f"shmhpc float64 ({WORKERS if TWO else 1} workers, warm)"] < 1e-9  # accurate: float64 accumulation
    assert "result: sum = " in out.stdout and "verified" in out.stdout


def test_deleting_the_session_removes_its_segments(no_leak):
    import gc

    before = our_segments()
    s = shmhpc.Session(workers=1)
    a = s.share(np.arange(10_000.0))
    assert len(our_segments() - before) == 1 and a.pids
    del s, a
    gc.collect()
    assert our_segments() - before == set()


def test_a_notebook_like_main_with_threads_and_no_file(tmp_path):
    """As in a Jupyter kernel: __main__ has no file, other threads run (so auto starts a fork server), and the
    kernel is a lambda typed at the prompt. The code comes on stdin (``python -``)."""
    code = textwrap.dedent(
        """
        import json, threading, time, numpy as np, shmhpc
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # a kernel's own threads
        x = np.arange(1, 100_001, dtype=np.float64)
        with shmhpc.Session(workers=2, oversubscribe=True) as s:
            a = s.share(x)
            r = s.map(a, lambda chunk: float((chunk % 7 == 0).sum()))
            print(json.dumps({"value": r.value, "method": r.report["pool"]["start_method"], "ok": r.verified}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env()
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"value": float(100_000 // 7), "method": "forkserver", "ok": True}, got


def test_a_big_endian_or_strided_array_is_shared_by_value(no_leak):
    x = np.arange(40_000, dtype=">f4")[::2]  # another byte order, not contiguous
    with shmhpc.Session(workers=1) as s:
        a = s.share(x)
        assert a.dtype == np.float32 and a.shape == (20_000,)
        assert s.reduce(a, "sum").value == float(np.sum(x, dtype=np.float64))
