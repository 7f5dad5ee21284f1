"""An ophyd ``Device`` (Channel Access) for the workflow, declared PV by PV from the table.

Each component names its PV through :data:`~ptychoflow.pvnames.CONTROL` and
its attribute is the PV's attribute there, so a renamed PV changes here without
an edit and a PV added to the table without a component here fails
``tests/unit/test_devices.py``. Settings kept by autosave are configuration
(``read_configuration``), the workflow state is the hinted reading.

Writable signals use ``put_complete=True``: their ``set`` finishes when the IOC
has processed the put, so a plan can read the value back and find a refusal
(over CA the IOC restores the old value and explains why in ``Message_RBV``)
instead of waiting forever for a read-back that will never come.
"""

from __future__ import annotations

from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Kind

from ptychoflow.pvnames import CONTROL


class WorkflowDevice(Device):
    """The ptychoflow control IOC over Channel Access (ophyd)."""

    workflow_start = Cpt(EpicsSignal, CONTROL.workflow_start.suffix, put_complete=True)
    workflow_abort = Cpt(EpicsSignal, CONTROL.workflow_abort.suffix, put_complete=True)
    workflow_auto = Cpt(EpicsSignal, CONTROL.workflow_auto.suffix,
                        put_complete=True, kind=Kind.config)
    workflow_state = Cpt(EpicsSignalRO, CONTROL.workflow_state.suffix, kind=Kind.hinted)
    workflow_busy = Cpt(EpicsSignalRO, CONTROL.workflow_busy.suffix)
    workflow_progress = Cpt(EpicsSignalRO, CONTROL.workflow_progress.suffix)
    workflow_message = Cpt(EpicsSignalRO, CONTROL.workflow_message.suffix, string=True)
    workflow_report = Cpt(EpicsSignalRO, CONTROL.workflow_report.suffix, string=True)
    workflow_run_id = Cpt(EpicsSignalRO, CONTROL.workflow_run_id.suffix)
    workflow_active_runs = Cpt(EpicsSignalRO, CONTROL.workflow_active_runs.suffix)
    workflow_queued_scans = Cpt(EpicsSignalRO, CONTROL.workflow_queued_scans.suffix)
    scan_path = Cpt(EpicsSignal, CONTROL.scan_path.suffix, put_complete=True, string=True)
    transfer_backend = Cpt(EpicsSignal, CONTROL.transfer_backend.suffix,
                           put_complete=True, kind=Kind.config)
    transfer_rate = Cpt(EpicsSignalRO, CONTROL.transfer_rate.suffix)
    compute_backend = Cpt(EpicsSignal, CONTROL.compute_backend.suffix,
                          put_complete=True, kind=Kind.config)
    recon_algorithm = Cpt(EpicsSignal, CONTROL.recon_algorithm.suffix,
                          put_complete=True, kind=Kind.config)
    recon_epochs = Cpt(EpicsSignal, CONTROL.recon_epochs.suffix,
                       put_complete=True, kind=Kind.config)
    recon_epoch = Cpt(EpicsSignalRO, CONTROL.recon_epoch.suffix)
    recon_error = Cpt(EpicsSignalRO, CONTROL.recon_error.suffix)
    recon_streaming = Cpt(EpicsSignal, CONTROL.recon_streaming.suffix,
                          put_complete=True, kind=Kind.config)
    recon_phase_array_data = Cpt(EpicsSignalRO, CONTROL.recon_phase_array_data.suffix)
    recon_phase_array_size0 = Cpt(EpicsSignalRO, CONTROL.recon_phase_array_size0.suffix)
    recon_phase_array_size1 = Cpt(EpicsSignalRO, CONTROL.recon_phase_array_size1.suffix)
    recon_phase_unique_id = Cpt(EpicsSignalRO, CONTROL.recon_phase_unique_id.suffix)
    train_epochs = Cpt(EpicsSignal, CONTROL.train_epochs.suffix,
                       put_complete=True, kind=Kind.config)
    train_val_fraction = Cpt(EpicsSignal, CONTROL.train_val_fraction.suffix,
                             put_complete=True, kind=Kind.config)
    train_epoch = Cpt(EpicsSignalRO, CONTROL.train_epoch.suffix)
    train_loss = Cpt(EpicsSignalRO, CONTROL.train_loss.suffix)
    train_val_loss = Cpt(EpicsSignalRO, CONTROL.train_val_loss.suffix)
    train_best_val_loss = Cpt(EpicsSignalRO, CONTROL.train_best_val_loss.suffix)
    model_version = Cpt(EpicsSignalRO, CONTROL.model_version.suffix)
    model_deploy = Cpt(EpicsSignal, CONTROL.model_deploy.suffix, put_complete=True)
    model_quality = Cpt(EpicsSignalRO, CONTROL.model_quality.suffix)
    model_deployed = Cpt(EpicsSignalRO, CONTROL.model_deployed.suffix)
    model_quality_target = Cpt(EpicsSignal, CONTROL.model_quality_target.suffix,
                               put_complete=True, kind=Kind.config)
    model_target_met = Cpt(EpicsSignalRO, CONTROL.model_target_met.suffix)
    model_consistency_factor = Cpt(EpicsSignal, CONTROL.model_consistency_factor.suffix,
                                   put_complete=True, kind=Kind.config)
    model_consistency_hold = Cpt(EpicsSignal, CONTROL.model_consistency_hold.suffix,
                                 put_complete=True, kind=Kind.config)


def workflow_device(prefix: str, name: str = "workflow", **kwargs: Any) -> Device:
    """The workflow device for the IOC serving ``prefix`` (e.g. ``PTYCHO:``)."""
    return WorkflowDevice(prefix, name=name, **kwargs)
