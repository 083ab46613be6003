"""Was the measurement alone on its CPUs? Other shmhpc runs and foreign load during the rounds.

Pinning says where *our* workers run, not that nothing else runs there. On a
login node or an oversubscribed Slurm partition (no cgroup isolation) two
pinned runs can land on the same CPUs and each get half the time slices: the
timings look plausible but are wrong. Two probes catch it:

* **other runs**: every live launcher with a segment in the shm dir, and the CPUs its workers may use.
  Segment names are visible to every user even when the files are mode 0600, and ``sched_getaffinity``
  of another user's process needs no privilege, so this works across users.
* **busy time**: per-CPU busy ticks from ``/proc/stat`` over the rounds, minus the CPU time of this
  run's own processes. What is left ran on our CPUs but was not us.

Nothing here may fail a run: every probe error becomes a note in the section.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from .cpulist import format_cpulist
from .shm import parse_segment_name, segment_dirs

__all__ = ["ContentionProbe", "parse_proc_stat", "load_fractions", "other_runs", "contention_warnings"]

# A CPU-bound neighbour on one of our CPUs takes about half of it (the scheduler shares it fairly), i.e. 0.5.
# Kernel threads, interrupts and tick rounding stay at a few percent on a quiet node. 0.15 sits well between
# the two, and above it the slowest worker (which sets every round's wall time) is measurably slowed.
FOREIGN_THRESHOLD = 0.15
# /proc/stat counts in ticks of 10 ms (USER_HZ = 100): below ~20 ticks per CPU the rounding of the two
# samples alone is several percent, so a shorter window is recorded but not judged.
MIN_WINDOW_S = 0.2
# A CPU group is flagged only when the foreign time is also at least this many ticks: tick rounding of
# the four samples (busy and own, start and end) can never add up to it on its own.
MIN_FOREIGN_TICKS = 5
METHOD = (
    "busy ticks of the planned CPUs in /proc/stat (user+nice+system+irq+softirq+steal) minus the CPU time of "
    "this run's workers and launcher, over the warmup and repeat rounds; other runs from shmhpc segment names"
)
# Helpers of multiprocessing that a launcher starts: they sleep during the rounds and keep the launcher's
# wide affinity, so counting them would make every other run look as if it used all CPUs.
_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def parse_proc_stat(text: str) -> dict[int, tuple[int, int]]:
    """Per-CPU ``(busy, idle)`` ticks from the text of ``/proc/stat``.

    Busy is user+nice+system+irq+softirq+steal: steal is time the hypervisor gave our vCPU to another
    guest, so it is contention too. Idle is idle+iowait. guest/guest_nice are already inside user/nice.
    """
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        v = [int(x) for x in rest.split()] + [0] * 8  # old kernels have fewer columns
        user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
        out[int(name[3:])] = (user + nice + system + irq + softirq + steal, idle + iowait)
    return out


def _merge_groups(groups: list[tuple[tuple[int, ...], float]]) -> list[tuple[list[int], float]]:
    """Join workers whose CPU sets overlap (oversubscribed or unpinned): their time cannot be told apart."""
    merged: list[tuple[set[int], float]] = []
    for cpus, own in groups:
        s, o = set(cpus), own
        for m in [m for m in merged if m[0] & s]:
            merged.remove(m)
            s, o = s | m[0], o + m[1]
        merged.append((s, o))
    return sorted(((sorted(s), o) for s, o in merged), key=lambda g: g[0])


def load_fractions(
    before: str,
    after: str,
    window_s: float,
    groups: list[tuple[tuple[int, ...], float]],
    launcher_s: float = 0.0,
    tick_s: float = 0.01,
) -> dict[str, Any]:
    """Busy, own and foreign fractions of the planned CPUs from two ``/proc/stat`` texts.

    Parameters
    ----------
    before, after : str
        ``/proc/stat`` read at the start and end of the window.
    window_s : float
        Wall time between the two reads.
    groups : list of (cpus, own_s)
        Each worker's CPU set and the CPU seconds it used in the window.
    launcher_s : float
        The launcher's CPU seconds: it may have run on any of our CPUs, so it is taken off every group
        (it can never be mistaken for foreign load).
    tick_s : float
        Length of one ``/proc/stat`` tick.

    Returns
    -------
    dict
        ``window_s``, ``cpus``, ``busy_fraction``, ``own_fraction``, ``foreign_fraction`` (all CPUs together),
        ``judged`` and ``by_cpus`` (one entry per group of CPUs with its own ``foreign_fraction``).
    """
    a, b = parse_proc_stat(before), parse_proc_stat(after)
    merged = _merge_groups(groups)
    cpus = sorted({c for g, _ in merged for c in g})
    out: dict[str, Any] = {"window_s": window_s, "cpus": cpus, "judged": False, "by_cpus": []}
    out.update(busy_fraction=None, own_fraction=None, foreign_fraction=None)
    missing = [c for c in cpus if c not in a or c not in b]
    if missing or not cpus or window_s <= 0:
        out["note"] = f"CPUs {format_cpulist(missing)} not in /proc/stat" if missing else "empty window"
        return out

    def busy_s(cs: list[int]) -> float:
        return sum(b[c][0] - a[c][0] for c in cs) * tick_s

    def fraction(x: float, cs: list[int]) -> float:
        return min(1.0, max(0.0, x / (len(cs) * window_s)))  # ticks and CPU times round differently

    own = sum(o for _, o in merged) + launcher_s
    out.update(
        busy_fraction=fraction(busy_s(cpus), cpus),
        own_fraction=fraction(own, cpus),
        foreign_fraction=fraction(busy_s(cpus) - own, cpus),
    )
    for g, o in merged:
        foreign = busy_s(g) - o - launcher_s
        out["by_cpus"].append(
            {"cpus": g, "foreign_fraction": fraction(foreign, g), "significant": foreign >= MIN_FOREIGN_TICKS * tick_s}
        )
    out["judged"] = window_s >= MIN_WINDOW_S
    if not out["judged"]:
        out["note"] = f"window {window_s:.3f} s is too short to judge (ticks of {tick_s * 1000:g} ms)"
    return out


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _cpus_of_run(pid: int) -> list[int]:
    """CPUs a launcher's workers may use (its own affinity before it has workers). Raises psutil.Error."""
    launcher = psutil.Process(pid)
    cpus: set[int] = set()
    for child in launcher.children(recursive=True):
        try:
            if any(h in " ".join(child.cmdline()) for h in _HELPERS):
                continue
            cpus.update(child.cpu_affinity() or [])
        except psutil.Error:
            continue  # exited or not ours to read: the others still say where the run is
    return sorted(cpus or launcher.cpu_affinity() or [])


def other_runs(shm_dir: str, our_cpus: list[int], me: int | None = None) -> list[dict[str, Any]]:
    """Live shmhpc launchers other than ``me`` with a segment in ``shm_dir`` (or on a hugetlbfs mount), their
    CPUs and the overlap."""
    me = os.getpid() if me is None else me
    found: list[dict[str, Any]] = []
    segments = [(shm_dir, name) for name in sorted(os.listdir(shm_dir))]
    for d in segment_dirs(shm_dir)[1:]:  # hugetlbfs mounts: one we cannot list holds no run we could see
        try:
            segments.extend((d, name) for name in sorted(os.listdir(d)))
        except OSError:
            continue
    for d, name in segments:
        owner = parse_segment_name(name)
        if owner is None or owner.pid == me:
            continue
        try:
            created = os.lstat(os.path.join(d, name)).st_ctime
            if psutil.Process(owner.pid).create_time() > created + 1.0:
                continue  # the pid now belongs to a later process: that run is dead
            cpus = _cpus_of_run(owner.pid)
        except (OSError, psutil.Error):
            continue  # the run ended while we looked
        overlap = sorted(set(cpus) & set(our_cpus))
        found.append(
            {"pid": owner.pid, "uid": owner.uid, "slurm_job": owner.slurm_job, "cpus": cpus, "overlap": overlap}
        )
    return found


class ContentionProbe:
    """Both probes around one run's rounds: ``check_others`` before and after, ``start``/``stop``; never raises."""

    def __init__(
        self,
        worker_cpus: list[tuple[int, ...]],
        shm_dir: str,
        proc_root: str = "/proc",
        peers: frozenset[int] = frozenset(),
    ) -> None:
        self.peers = peers  # launcher pids of the same job (a multi-node run's ranks on this host): not "others"
        self.groups = worker_cpus
        self.cpus = sorted({c for g in worker_cpus for c in g})
        self.shm_dir, self.stat_path = shm_dir, os.path.join(proc_root, "stat")
        self.others: dict[int, dict[str, Any]] = {}  # by launcher pid
        self.notes: list[str] = []  # probe errors: reported, never raised
        self.loads: dict[str, Any] | None = None
        self._start: tuple[float, str, list[tuple[psutil.Process, float]], float] | None = None

    def check_others(self) -> None:
        try:
            for run in other_runs(self.shm_dir, self.cpus):
                if run["pid"] in self.peers:
                    continue
                seen = self.others.setdefault(run["pid"], run)
                seen["cpus"] = sorted(set(seen["cpus"]) | set(run["cpus"]))
                seen["overlap"] = sorted(set(seen["overlap"]) | set(run["overlap"]))
        except Exception as exc:  # a probe must never fail the run
            self.notes.append(f"other runs: {type(exc).__name__}: {exc}")

    def start(self, worker_pids: list[int]) -> None:
        try:
            own = [(p, _cpu_s(p)) for p in map(psutil.Process, worker_pids)]
            with open(self.stat_path) as f:
                self._start = (time.monotonic(), f.read(), own, _cpu_s(psutil.Process()))
        except Exception as exc:
            self.notes.append(f"busy time: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        if self._start is None:
            return
        t0, before, own0, launcher0 = self._start
        try:
            with open(self.stat_path) as f:
                after, window = f.read(), time.monotonic() - t0
            own = [(self.groups[i], _cpu_s(p) - s) for i, (p, s) in enumerate(own0)]
            launcher = _cpu_s(psutil.Process()) - launcher0
            self.loads = load_fractions(before, after, window, own, launcher, 1.0 / os.sysconf("SC_CLK_TCK"))
        except Exception as exc:
            self.notes.append(f"busy time: {type(exc).__name__}: {exc}")

    def result(self) -> tuple[dict[str, Any], list[str]]:
        """The report's ``contention`` section and one warning line per problem found."""
        loads = self.loads or dict.fromkeys(("window_s", "busy_fraction", "own_fraction", "foreign_fraction"))
        section: dict[str, Any] = {"method": METHOD, "threshold": FOREIGN_THRESHOLD, "cpus": self.cpus, "judged": False}
        section.update({k: v for k, v in loads.items() if k not in ("cpus", "note")})
        section["other_runs"] = sorted(self.others.values(), key=lambda r: r["pid"])
        notes = self.notes + ([loads["note"]] if loads.get("note") else [])
        if notes:
            section["notes"] = notes
        return section, contention_warnings(section)


def contention_warnings(section: dict[str, Any]) -> list[str]:
    """One line per other run on our CPUs, and one per CPU group with foreign load above the threshold."""
    lines = []
    for r in section.get("other_runs") or []:
        if r["overlap"]:
            job = f", Slurm job {r['slurm_job']}" if r["slurm_job"] else ""
            lines.append(
                f"another shmhpc run (pid {r['pid']}, uid {r['uid']}{job}) uses CPUs {format_cpulist(r['overlap'])}, "
                "which this run also uses: the timings were not measured alone"
            )
    if section.get("judged"):
        for g in section.get("by_cpus") or []:
            if g["significant"] and g["foreign_fraction"] > FOREIGN_THRESHOLD:
                what = f"CPU {g['cpus'][0]} was" if len(g["cpus"]) == 1 else f"CPUs {format_cpulist(g['cpus'])} were"
                lines.append(
                    f"{what} {100 * g['foreign_fraction']:.0f} % busy with other work during the warmup and "
                    "repeats: the timings were not measured alone"
                )
    return lines
