"""Transfer back ends: how a scan reaches the compute site and a model the edge.

One small class per back end behind :class:`Transfer`, chosen once per run from
:data:`TRANSFERS` by ``Transfer:Backend``. The orchestrator (on the beamline
host) does the transfers itself, between compute stages, so a transfer never
runs on the far side of the link it is meant to cross.

What lives where:

- ``base.py``: the :class:`Transfer` protocol, :class:`Moved` and the errors;
- ``local.py``: copies on a shared or local file system (sha256, ``.part``, retries);
- ``globus.py``: Globus Transfer through globus-sdk's ``TransferClient``.
"""

from __future__ import annotations

from ptychoflow.ioc.transfer.base import Moved, Transfer, TransferError
from ptychoflow.ioc.transfer.globus import GlobusTransfer
from ptychoflow.ioc.transfer.local import LocalTransfer

TRANSFERS: dict[str, type[Transfer]] = {"Local": LocalTransfer, "Globus": GlobusTransfer}

__all__ = ["TRANSFERS", "GlobusTransfer", "LocalTransfer", "Moved", "Transfer", "TransferError"]
