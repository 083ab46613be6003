"""shmhpc: one shared NumPy array, pinned NUMA-aware workers, honest reports.

The few names a user imports::

    from shmhpc import load_spec, read_topology, plan_job, run_job, load_report
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import RunError, ShmhpcError, SpecError
from .placement import plan_job
from .report import load_report
from .runner import run_job
from .spec import JobSpec, load_spec
from .topology import Topology, read_topology

__all__ = [
    "JobSpec",
    "RunError",
    "ShmhpcError",
    "SpecError",
    "Topology",
    "__version__",
    "load_report",
    "load_spec",
    "plan_job",
    "read_topology",
    "run_job",
]
