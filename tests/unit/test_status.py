"""``ptychoflow status``: what one frame of the view shows, from values alone (no servers)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

from ptychoflow.pvnames import CONTROL, EDGE, by_suffix
from ptychoflow.status import CONTROL_VIEW, EDGE_VIEW, decode, render

C, E = by_suffix(CONTROL), by_suffix(EDGE)


def text(values: dict[str, object], prefix: str = "P:", edge_prefix: str = "E:") -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=100, highlight=False).print(render(values, prefix, edge_prefix))
    return out.getvalue()


def busy_run() -> dict[str, object]:
    v: dict[str, object] = {
        "Workflow:State_RBV": "Reconstructing", "Workflow:Progress_RBV": 45.0,
        "Workflow:Message_RBV": "rPIE epoch 45 of 100 [GPU 0]", "Workflow:RunId_RBV": 17,
        "Workflow:ActiveRuns_RBV": 2, "Workflow:QueuedScans_RBV": 5, "Workflow:Auto": "On",
        "Model:QualityTarget": 0.8, "Model:TargetMet_RBV": "No", "Model:Version_RBV": 3,
        "Model:Deployed_RBV": 2, "Model:Quality_RBV": 0.875, "Transfer:Backend": "Globus",
        "Compute:Backend": "Parsl", "Recon:Algorithm": "LSQML", "Recon:Epochs": 123,
        "Train:Epochs": 77, "Edge:FrameRate_RBV": 1234.5, "Edge:Latency_RBV": 2.25,
        "Edge:Processed_RBV": 98765, "Edge:Dropped_RBV": 4, "Edge:BadFrames_RBV": 1,
        "Edge:Missed_RBV": 3, "Edge:Unplaced_RBV": 0,
        "Edge:Model:Version_RBV": 2, "Edge:Message_RBV": "serving model-v2.onnx",
    }
    assert set(v) == {s.suffix for s in CONTROL_VIEW + EDGE_VIEW}  # every PV of the view
    return v


def test_a_frame_shows_every_value_with_its_units_and_state_names() -> None:
    out = text(busy_run())
    for shown in ("Workflow  P:", "Edge  E:", "Reconstructing", "45.0 %", "17",
                  "rPIE epoch 45 of 100 [GPU 0]", "On", "0.800  not met", "v3", "v2", "0.875",
                  "Globus", "Parsl", "LSQML", "123", "77", "1234.500 Hz", "2.250 ms", "98765",
                  "serving model-v2.onnx"):
        assert shown in out, f"{shown!r} missing from\n{out}"
    assert "disconnected" not in out
    assert "━" in out  # the progress bar


def test_an_edge_that_does_not_answer_says_so_while_the_ioc_part_still_shows() -> None:
    values = {k: v for k, v in busy_run().items() if not k.startswith("Edge:")}
    values["Edge:FrameRate_RBV"] = None  # connected once, then gone
    out = text(values)
    assert "Reconstructing" in out and "LSQML" in out
    edge = out[out.index("Edge  E:"):]
    assert "disconnected: E:Edge:FrameRate_RBV does not answer" in edge
    assert "Hz" not in edge


def test_no_ioc_says_which_pv_does_not_answer() -> None:
    out = text({})
    assert "disconnected: P:Workflow:State_RBV does not answer" in out
    assert "disconnected: E:Edge:FrameRate_RBV does not answer" in out


def test_one_pv_that_does_not_answer_shows_disconnected_in_its_place() -> None:
    values = busy_run()
    values["Recon:Epochs"] = None
    out = text(values)
    assert out.count("disconnected") == 1
    line = next(x for x in out.splitlines() if "Recon epochs" in x)
    assert "disconnected" in line


def test_the_quality_target_reads_met_none_or_not_met() -> None:
    values = busy_run() | {"Model:QualityTarget": 0.8, "Model:TargetMet_RBV": "Yes"}
    assert "0.800  met: Auto paused" in text(values)
    values["Model:QualityTarget"] = 0.0
    assert "none (Auto runs on every scan)" in text(values)


def test_no_model_yet_reads_none() -> None:
    values = busy_run() | {"Model:Version_RBV": 0, "Model:Deployed_RBV": 0,
                           "Edge:Model:Version_RBV": 0}
    out = text(values)
    assert "v0" not in out and out.count("none") >= 3


def test_values_decode_to_what_the_view_shows() -> None:
    from p4p.nt import NTEnum, NTScalar

    state = NTEnum().wrap({"index": 2, "choices": ["a", "b", "c"]})
    assert decode(C["Workflow:State_RBV"], state) == "Reconstructing"  # the table's names
    out_of_range = NTEnum().wrap({"index": 42, "choices": []})
    assert decode(C["Workflow:State_RBV"], out_of_range) == "42"
    chars = NTScalar("ab").wrap(np.frombuffer(b"scan 7 done\0\0", np.int8))
    assert decode(C["Workflow:Message_RBV"], chars) == "scan 7 done"  # a long string
    assert decode(E["Edge:Message_RBV"], NTScalar("s").wrap("ok")) == "ok"
    assert decode(E["Edge:Processed_RBV"], NTScalar("l").wrap(12)) == 12
    assert decode(E["Edge:Latency_RBV"], NTScalar("d").wrap(1.5)) == 1.5


def test_ptychoflow_help_does_not_load_rich_or_p4p_for_status() -> None:
    code = ("import sys, argparse, ptychoflow.status as s; s.register(argparse.ArgumentParser());"
            "print('rich' in sys.modules, 'p4p' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_a_long_message_shows_its_start_on_a_few_lines() -> None:
    long = "stage failed:\n" + "Traceback line " * 80
    out = text(busy_run() | {"Workflow:Message_RBV": long})
    assert "stage failed: Traceback line" in out and "…" in out
    assert len(out.splitlines()) <= len(text(busy_run()).splitlines()) + 2
