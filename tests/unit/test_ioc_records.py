"""db/ holds exactly what the code generates from pvnames.CONTROL."""

from __future__ import annotations

from pathlib import Path

from ptychoflow.ioc.access import EXAMPLE_HOSTS, EXAMPLE_WRITERS, acf_text
from ptychoflow.ioc.naming import ATTRS, attr_name, spec_for
from ptychoflow.ioc.records import autosave_request, database_text, record_fields
from ptychoflow.pvnames import CONTROL, by_suffix

DB = Path(__file__).resolve().parents[2] / "db"


def test_database_file_is_generated_from_pvnames():
    assert (DB / "ptychoflow.db").read_text() == database_text(), (
        "db/ptychoflow.db is stale: python -m ptychoflow.ioc.records > db/ptychoflow.db")


def test_autosave_request_lists_the_autosaved_settings():
    assert (DB / "ptychoflow.req").read_text() == autosave_request()
    listed = [ln.removeprefix("$(P)") for ln in autosave_request().splitlines()
              if not ln.startswith("#")]
    assert set(listed) == {s.suffix for s in CONTROL if s.autosave}
    assert {"Workflow:Auto", "Recon:Algorithm", "Train:ValFraction"} <= set(listed)


def test_acf_file_is_the_generated_example():
    assert (DB / "ptychoflow.acf").read_text() == acf_text(EXAMPLE_WRITERS, EXAMPLE_HOSTS)


def test_every_control_pv_is_in_the_database_with_its_metadata():
    text = database_text()
    for spec in CONTROL:
        assert f'"$(P){spec.suffix}"' in text
    f = record_fields(by_suffix(CONTROL)["Recon:Epochs"])
    assert f["LOPR"] == "1" and f["HOPR"] == "10000"
    assert "DRVL" not in f and "DRVH" not in f  # they would clamp instead of refusing
    f = record_fields(by_suffix(CONTROL)["Workflow:State_RBV"])
    assert f["ASG"] == "READONLY" and f["SVST"] == "Aborted"
    assert record_fields(by_suffix(CONTROL)["Model:Deploy"])["HOPR"] == "1000000"


def test_device_attribute_names():
    assert attr_name("Workflow:State_RBV") == "workflow_state"
    assert attr_name("Train:BestValLoss_RBV") == "train_best_val_loss"
    assert len(ATTRS) == len(CONTROL)
    assert spec_for("train_val_fraction").suffix == "Train:ValFraction"
    assert spec_for("Scan:Path").suffix == "Scan:Path"
