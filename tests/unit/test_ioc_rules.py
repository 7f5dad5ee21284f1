"""Put rules, state machine, access file and settings of the control IOC (no EPICS)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from ptychoflow.config import ConfigError
from ptychoflow.ioc.access import acf_text
from ptychoflow.ioc.settings import DEFAULT_STAGES, IocSettings
from ptychoflow.ioc.statemachine import StateMachine, TransitionError, allowed
from ptychoflow.ioc.validate import check_scan_path, check_value
from ptychoflow.pvnames import CONTROL, by_suffix
from ptychoflow.scanfile import Scan, write_scan

S = by_suffix(CONTROL)


@pytest.mark.parametrize(("suffix", "value", "ok"), [
    ("Recon:Epochs", 1, True), ("Recon:Epochs", 10000, True), ("Recon:Epochs", 0, False),
    ("Recon:Epochs", 10001, False), ("Recon:Epochs", 2.5, False), ("Recon:Epochs", "5", False),
    ("Train:ValFraction", 0.01, True), ("Train:ValFraction", 0.5, True),
    ("Train:ValFraction", 0.0099, False), ("Train:ValFraction", math.nan, False),
    ("Train:ValFraction", math.inf, False), ("Train:ValFraction", True, False),
    ("Recon:Algorithm", 3, True), ("Recon:Algorithm", 4, False), ("Recon:Algorithm", -1, False),
    ("Workflow:Auto", 1, True), ("Workflow:Auto", 2, False),
    ("Scan:Path", "/x", True), ("Scan:Path", "x" * 1025, False), ("Scan:Path", "a\nb", False),
    ("Workflow:State_RBV", 1, False),
])
def test_check_value(suffix, value, ok):
    problem = check_value(S[suffix], value)
    assert (problem is None) == ok, problem
    if not ok:
        assert suffix in problem


def test_scan_path_must_be_a_complete_file_under_the_data_root(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    good = write_scan(root / "sub" / "s.h5", Scan(data=np.ones((2, 4, 4), np.uint16),
                                                  positions=np.zeros((2, 2)), energy_ev=8800.0,
                                                  distance_m=2.0, pixel_size_m=75e-6))
    (root / "junk.h5").write_bytes(b"x")
    outside = tmp_path / "o.h5"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "escape.h5")
    os.symlink(good, root / "inside-link.h5")
    (root / "w.h5.part").write_bytes(b"x")
    assert check_scan_path(str(good), root) is None
    assert check_scan_path("sub/s.h5", root) is None  # relative to the data root
    assert check_scan_path(str(root / "inside-link.h5"), root) is None
    assert check_scan_path("", root) is None
    assert "outside the data root" in check_scan_path(str(outside), root)
    assert "outside the data root" in check_scan_path(str(root / "sub/../../o.h5"), root)
    assert "outside the data root" in check_scan_path(str(root / "escape.h5"), root)
    assert "data_root" in check_scan_path(str(outside), root)  # names the fix
    assert "still being written" in check_scan_path(str(root / "w.h5.part"), root)
    assert "does not exist" in check_scan_path(str(root / "nope.h5"), root)
    assert "does not exist" in check_scan_path(str(root / "sub"), root)
    assert check_scan_path("bad\x00path", root) is not None
    assert "not a readable HDF5" in check_scan_path(str(root / "junk.h5"), root)  # header read


def test_state_machine_follows_the_pipeline():
    sm = StateMachine()
    for s in ("Transferring", "Reconstructing", "Training", "Deploying", "Done"):
        sm.go(s)
    assert not sm.busy and sm.index() == 5
    sm.go("Transferring")
    assert sm.busy
    with pytest.raises(TransitionError):
        sm.go("Training")  # no skipping stages
    sm.go("Aborted")
    assert allowed("Idle", "Failed")  # a run can fail before its first stage
    assert allowed("Idle", "Aborted")  # ... or be aborted while it waits for its turn
    assert not allowed("Idle", "Done") and not allowed("Done", "Aborted")


def test_acf_limits_writes_to_listed_users_and_hosts():
    text = acf_text(["alice", "bob"], ["console1"])
    assert 'UAG(writers) { "alice", "bob" }' in text
    assert 'RULE(1, WRITE) { UAG(writers) HAG(writer_hosts) }' in text
    assert "ASG(READONLY) {\n    RULE(1, READ)\n}" in text
    open_text = acf_text()
    assert "RULE(1, WRITE)\n" in open_text and "UAG" not in open_text
    with pytest.raises(ValueError):
        acf_text(['bad"name'])


def test_settings_defaults_and_stage_names():
    s = IocSettings()
    assert s.stages == DEFAULT_STAGES
    assert s.stages["export"] == "ptychoflow.remote.stages:export"
    s = IocSettings(stages={"train": "mymod:train"})
    assert s.stages["train"] == "mymod:train" and s.stages["export"].endswith(":export")
    with pytest.raises(ConfigError, match="no longer a compute stage"):
        IocSettings(stages={"transfer": "m:f"})
    with pytest.raises(ConfigError, match="module:function"):
        IocSettings(stages={"train": "nodots"})
    with pytest.raises(ConfigError, match="unknown stage"):
        IocSettings(stages={"deploy": "m:f"})


def test_progress_records_map_onto_read_backs():
    from ptychoflow.ioc.orchestrator import progress_values

    assert progress_values({"stage": "reconstruct", "fraction": 0.25, "epoch": 3,
                            "error": 0.5}) == {"Workflow:Progress_RBV": 25.0,
                                               "Recon:Epoch_RBV": 3, "Recon:Error_RBV": 0.5}
    assert progress_values({"stage": "train", "fraction": 2.0, "epoch": 1, "loss": 0.3,
                            "val_loss": 0.4, "best_val_loss": 0.2}) == {
        "Workflow:Progress_RBV": 100.0, "Train:Epoch_RBV": 1, "Train:Loss_RBV": 0.3,
        "Train:ValLoss_RBV": 0.4, "Train:BestValLoss_RBV": 0.2}
    assert progress_values({"stage": "transfer", "rate_mb_s": 120.0, "fraction": None}) == {
        "Transfer:Rate_RBV": 120.0}
    assert progress_values({"stage": "train", "epoch": "x", "loss": True}) == {}


def test_load_stage_names_the_setting_to_fix():
    from ptychoflow.ioc.settings import load_stage

    assert load_stage("os.path:join") is os.path.join
    with pytest.raises(RuntimeError, match=r"\[ioc.stages\]"):
        load_stage("no_such_module_q:f")
    with pytest.raises(RuntimeError, match="AttributeError"):
        load_stage("os.path:no_such_function")
