"""Compute back ends: where the compute stages run, chosen by ``Compute:Backend``.

Every back end is an executor the stage functions of :mod:`ptychoflow.stages`
are submitted to unchanged; the orchestrator picks one from :data:`COMPUTES`
once per run.

What lives where:

- ``base.py``: the :class:`Compute` protocol, :class:`BackendNotConfigured`, worker-loss errors;
- ``local.py``: a spawned process pool on this host (the default);
- ``parsl_htex.py``: a Parsl ``HighThroughputExecutor`` (Local, Slurm or PBS Pro provider);
- ``globus.py``: a Globus Compute endpoint (``globus_compute_sdk.Executor``).
"""

from __future__ import annotations

from ptychoflow.ioc.compute.base import BackendNotConfigured, Compute, WorkerLost, table_of
from ptychoflow.ioc.compute.globus import GlobusCompute
from ptychoflow.ioc.compute.local import LocalCompute
from ptychoflow.ioc.compute.parsl_htex import ParslCompute

COMPUTES: dict[str, type[Compute]] = {"Local": LocalCompute, "Parsl": ParslCompute,
                                      "GlobusCompute": GlobusCompute}

__all__ = ["COMPUTES", "BackendNotConfigured", "Compute", "GlobusCompute", "LocalCompute",
           "ParslCompute", "WorkerLost", "table_of"]
