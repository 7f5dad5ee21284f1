"""An ophyd-async device (pvAccess) for the workflow, declared PV by PV from the table.

Each signal is a typed field whose PV suffix comes from
:data:`~ptychoflow.pvnames.CONTROL` (never spelled here), ophyd-async's
declarative :class:`EpicsDevice` connects it under ``pva://`` + prefix, and
``tests/unit/test_devices.py`` checks the fields against the table: every PV a
field of its attribute name, read-only or writable as the PV is, of its type.

Enum PVs get a :class:`StrictEnum` whose values are the states the IOC serves
(checked against the table by the same test), so a wrong state name fails on
connect rather than at the beamline, and a plan names states, not indexes.
"""

from __future__ import annotations

from typing import Annotated as A
from typing import Any

import numpy as np
from ophyd_async.core import Array1D, SignalR, SignalRW, StrictEnum
from ophyd_async.epics.core import EpicsDevice, PvSuffix

from ptychoflow.pvnames import CONTROL


class WorkflowStart(StrictEnum):
    """The states of ``CONTROL.workflow_start``."""

    IDLE = "Idle"
    START = "Start"


class WorkflowAbort(StrictEnum):
    """The states of ``CONTROL.workflow_abort``."""

    IDLE = "Idle"
    ABORT = "Abort"


class WorkflowAuto(StrictEnum):
    """The states of ``CONTROL.workflow_auto``."""

    OFF = "Off"
    ON = "On"


class WorkflowState(StrictEnum):
    """The states of ``CONTROL.workflow_state``."""

    IDLE = "Idle"
    TRANSFERRING = "Transferring"
    RECONSTRUCTING = "Reconstructing"
    TRAINING = "Training"
    DEPLOYING = "Deploying"
    DONE = "Done"
    FAILED = "Failed"
    ABORTED = "Aborted"


class WorkflowBusy(StrictEnum):
    """The states of ``CONTROL.workflow_busy``."""

    IDLE = "Idle"
    BUSY = "Busy"


class TransferBackend(StrictEnum):
    """The states of ``CONTROL.transfer_backend``."""

    LOCAL = "Local"
    GLOBUS = "Globus"


class ComputeBackend(StrictEnum):
    """The states of ``CONTROL.compute_backend``."""

    LOCAL = "Local"
    PARSL = "Parsl"
    GLOBUSCOMPUTE = "GlobusCompute"


class ReconAlgorithm(StrictEnum):
    """The states of ``CONTROL.recon_algorithm``."""

    RPIE = "rPIE"
    EPIE = "ePIE"
    LSQML = "LSQML"
    DM = "DM"


class ReconStreaming(StrictEnum):
    """The states of ``CONTROL.recon_streaming``."""

    OFF = "Off"
    ON = "On"


class ModelTargetMet(StrictEnum):
    """The states of ``CONTROL.model_target_met``."""

    NO = "No"
    YES = "Yes"


class WorkflowAsync(EpicsDevice):
    """The ptychoflow control IOC over pvAccess (ophyd-async)."""

    workflow_start: A[SignalRW[WorkflowStart], PvSuffix(CONTROL.workflow_start.suffix)]
    workflow_abort: A[SignalRW[WorkflowAbort], PvSuffix(CONTROL.workflow_abort.suffix)]
    workflow_auto: A[SignalRW[WorkflowAuto], PvSuffix(CONTROL.workflow_auto.suffix)]
    workflow_state: A[SignalR[WorkflowState], PvSuffix(CONTROL.workflow_state.suffix)]
    workflow_busy: A[SignalR[WorkflowBusy], PvSuffix(CONTROL.workflow_busy.suffix)]
    workflow_progress: A[SignalR[float], PvSuffix(CONTROL.workflow_progress.suffix)]
    workflow_message: A[SignalR[str], PvSuffix(CONTROL.workflow_message.suffix)]
    workflow_report: A[SignalR[str], PvSuffix(CONTROL.workflow_report.suffix)]
    workflow_run_id: A[SignalR[int], PvSuffix(CONTROL.workflow_run_id.suffix)]
    workflow_active_runs: A[SignalR[int], PvSuffix(CONTROL.workflow_active_runs.suffix)]
    workflow_queued_scans: A[SignalR[int], PvSuffix(CONTROL.workflow_queued_scans.suffix)]
    scan_path: A[SignalRW[str], PvSuffix(CONTROL.scan_path.suffix)]
    transfer_backend: A[SignalRW[TransferBackend], PvSuffix(CONTROL.transfer_backend.suffix)]
    transfer_rate: A[SignalR[float], PvSuffix(CONTROL.transfer_rate.suffix)]
    compute_backend: A[SignalRW[ComputeBackend], PvSuffix(CONTROL.compute_backend.suffix)]
    recon_algorithm: A[SignalRW[ReconAlgorithm], PvSuffix(CONTROL.recon_algorithm.suffix)]
    recon_epochs: A[SignalRW[int], PvSuffix(CONTROL.recon_epochs.suffix)]
    recon_epoch: A[SignalR[int], PvSuffix(CONTROL.recon_epoch.suffix)]
    recon_error: A[SignalR[float], PvSuffix(CONTROL.recon_error.suffix)]
    recon_streaming: A[SignalRW[ReconStreaming], PvSuffix(CONTROL.recon_streaming.suffix)]
    recon_phase_array_data: A[SignalR[Array1D[np.float32]],
                              PvSuffix(CONTROL.recon_phase_array_data.suffix)]
    recon_phase_array_size0: A[SignalR[int], PvSuffix(CONTROL.recon_phase_array_size0.suffix)]
    recon_phase_array_size1: A[SignalR[int], PvSuffix(CONTROL.recon_phase_array_size1.suffix)]
    recon_phase_unique_id: A[SignalR[int], PvSuffix(CONTROL.recon_phase_unique_id.suffix)]
    train_epochs: A[SignalRW[int], PvSuffix(CONTROL.train_epochs.suffix)]
    train_val_fraction: A[SignalRW[float], PvSuffix(CONTROL.train_val_fraction.suffix)]
    train_epoch: A[SignalR[int], PvSuffix(CONTROL.train_epoch.suffix)]
    train_loss: A[SignalR[float], PvSuffix(CONTROL.train_loss.suffix)]
    train_val_loss: A[SignalR[float], PvSuffix(CONTROL.train_val_loss.suffix)]
    train_best_val_loss: A[SignalR[float], PvSuffix(CONTROL.train_best_val_loss.suffix)]
    model_version: A[SignalR[int], PvSuffix(CONTROL.model_version.suffix)]
    model_deploy: A[SignalRW[int], PvSuffix(CONTROL.model_deploy.suffix)]
    model_quality: A[SignalR[float], PvSuffix(CONTROL.model_quality.suffix)]
    model_deployed: A[SignalR[int], PvSuffix(CONTROL.model_deployed.suffix)]
    model_quality_target: A[SignalRW[float], PvSuffix(CONTROL.model_quality_target.suffix)]
    model_target_met: A[SignalR[ModelTargetMet], PvSuffix(CONTROL.model_target_met.suffix)]
    model_consistency_factor: A[SignalRW[float],
                                PvSuffix(CONTROL.model_consistency_factor.suffix)]
    model_consistency_hold: A[SignalRW[float], PvSuffix(CONTROL.model_consistency_hold.suffix)]

    def __init__(self, prefix: str, name: str = "") -> None:
        super().__init__(prefix=f"pva://{prefix}", name=name)

    @property
    def signals(self) -> dict[str, SignalR[Any]]:
        """The signals by PV suffix, for code that holds a suffix rather than a name."""
        return {spec.suffix: getattr(self, name) for name, spec in CONTROL._asdict().items()}
