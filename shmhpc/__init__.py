"""shmhpc: one shared NumPy array, pinned NUMA-aware workers, honest reports.

The few names a user imports::

    from shmhpc import load_spec, read_topology, prepare, RunSession, run_job, read_report

Every name but the errors is imported on first use (PEP 562), so ``python -m shmhpc`` pays only
for what its command needs: ``clean`` never loads pydantic, planning never loads the pool, and a
run never builds the report model it does not read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import RunError, ShmhpcError, SpecError

if TYPE_CHECKING:
    from .api import Result, Session, Shared
    from .placement import plan_job
    from .planning import Prepared, prepare
    from .report import load_report, read_report
    from .report_model import RunReport
    from .runner import run_job
    from .session import RunSession
    from .spec import JobSpec, load_spec, spec_from_dict
    from .topology import Topology, read_topology

_LAZY = {
    "Session": ".api",
    "Shared": ".api",
    "Result": ".api",
    "run_job": ".runner",
    "RunSession": ".session",
    "prepare": ".planning",
    "Prepared": ".planning",
    "plan_job": ".placement",
    "load_report": ".report",
    "read_report": ".report",
    "RunReport": ".report_model",
    "JobSpec": ".spec",
    "load_spec": ".spec",
    "spec_from_dict": ".spec",
    "Topology": ".topology",
    "read_topology": ".topology",
}

__all__ = [
    "JobSpec",
    "Prepared",
    "Result",
    "RunError",
    "RunReport",
    "RunSession",
    "Session",
    "Shared",
    "ShmhpcError",
    "SpecError",
    "Topology",
    "__version__",
    "load_report",
    "load_spec",
    "plan_job",
    "prepare",
    "read_report",
    "read_topology",
    "run_job",
    "spec_from_dict",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'shmhpc' has no attribute {name!r}")
