"""The PyDM screens, opened headless against a live IOC and an edge fed by the simulator,
show live values and write what the operator types.

Three servers, each on its own loopback ports: the simulator streams frames, the
edge follows it (and also finds its name server), the IOC serves the control
PVs and runs a reconstruction whose stage (``ioc_test_stages.reconstruct_live``)
reports a live phase image as streaming rPIE does, for the workflow screen's
image. The screens run in a subprocess (tests/system/pydm_probe.py) whose
environment points Channel Access at the IOC and pvAccess at the edge, as an
operator console's would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptychoflow.edge.bench.models import affine_model
from ptychoflow.epicsenv import isolated_env, pva_conf
from ptychoflow.scanfile import Scan, write_scan
from tests.conftest import wait_for_pva
from tests.system.edge.edge_helpers import edge_args

pytest.importorskip("pydm")
pytestmark = [pytest.mark.system, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs" / "screens"
CA_KEYS = ("EPICS_CA_SERVER_PORT", "EPICS_CA_REPEATER_PORT", "EPICS_CA_ADDR_LIST",
           "EPICS_CA_AUTO_ADDR_LIST")


def test_pydm_screens_show_live_values_and_write_settings(start_server, prefix: str,
                                                          tmp_path: Path) -> None:
    sim_env, ioc_env = isolated_env(), isolated_env()
    edge_env = isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{sim_env['EPICS_PVA_SERVER_PORT']}"
    sim = start_server(["sim", "--prefix", prefix, "--frames", "2000", "--size", "64",
                        "--rate", "40", "--out", "", "--delay", "0"], sim_env, name="sim")
    model = affine_model(tmp_path / "models" / "net.onnx", 64)
    edge = start_server(edge_args(prefix, prefix + "Pva1:Image", model, "--pixel-size-m",
                                  "1e-8"), edge_env, name="edge")
    (tmp_path / "data").mkdir()
    scan = write_scan(tmp_path / "data" / "scan.h5", Scan(
        data=np.ones((4, 8, 8), np.uint16), positions=np.zeros((4, 2)), energy_ev=8800.0,
        distance_m=2.0, pixel_size_m=75e-6))
    config = tmp_path / "ioc.toml"  # the live image comes from a test stage (see above)
    config.write_text('[ioc.stages]\nreconstruct = "ioc_test_stages:reconstruct_live"\n'
                      'train = "ioc_test_stages:train"\nexport = "ioc_test_stages:export"\n')
    ioc_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE / "ioc"), os.environ.get("PYTHONPATH")]))
    ioc = start_server(["--config", str(config), "ioc", "--prefix", prefix, "--data-root",
                        str(tmp_path / "data"), "--work-root", str(tmp_path / "work")],
                       ioc_env, name="ioc")
    wait_for_pva(sim_env, prefix + "cam1:Acquire", server=sim)
    wait_for_pva(edge_env, prefix + "Edge:Processed_RBV", server=edge)
    wait_for_pva(ioc_env, prefix + "Workflow:State_RBV", server=ioc, timeout=60)
    from p4p.client.thread import Context

    with Context("pva", conf=pva_conf(ioc_env), useenv=False) as ctx:
        ctx.put(prefix + "Scan:Path", str(scan))
        ctx.put(prefix + "Workflow:Start", 1)

    gui_env = dict(edge_env)  # pvAccess: the edge (and the simulator)
    gui_env.update({k: ioc_env[k] for k in CA_KEYS})  # Channel Access: the IOC
    gui_env.update(QT_QPA_PLATFORM="offscreen", PYTHONPATH=os.pathsep.join(
        filter(None, [str(HERE.parents[1]), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "shots"
    probe = subprocess.run([sys.executable, str(HERE / "pydm_probe.py"), prefix, str(out), "60",
                            "123"], env=gui_env, capture_output=True, text=True, timeout=120,
                           cwd=str(tmp_path))
    assert probe.returncode == 0, probe.stdout[-3000:] + probe.stderr[-3000:]
    samples = json.loads((out / "probe.json").read_text())["samples"]
    last = samples[-1]
    why = f"{last}\n{edge.log()[-2000:]}"

    # the edge screen: a counter that moves, images with finite pixels, the Enable state
    counts = [int(s["processed"]) for s in samples if s["processed"].strip().isdigit()]
    assert len(set(counts)) >= 3 and counts == sorted(counts), why
    for image in ("phase", "stitched"):
        assert last[image] and last[image]["finite"] and last[image]["std"] > 0, why
    assert last["phase"]["shape"] == [64, 64]
    assert last["enable"] is True
    assert last["edge_message"].startswith("connected to"), why

    # the workflow screen: enum strings over CA, the state, and the operator's writes
    assert last["algorithms"] == ["rPIE", "ePIE", "LSQML", "DM"]
    assert last["algorithm"] == "rPIE" and last["state"] == "Reconstructing", last
    assert last["busy_connected"] is True
    assert last["auto"] is True and last["recon_epochs"] == "123", last
    # the live phase: the CA waveform reshaped by its width PV into the stage's 40 x 48 ramp
    live = last["live"]
    assert live and live["finite"] and live["std"] > 0, last
    assert live["shape"] == [40, 48] and live["ramp_along_x"], last  # height x width
    assert last["live_images"].strip().isdigit() and int(last["live_images"]) >= 1, last
    with Context("pva", conf=pva_conf(ioc_env), useenv=False, nt=False) as ctx:
        assert int(ctx.get(prefix + "Workflow:Auto", timeout=5)["value"]["index"]) == 1
        assert int(ctx.get(prefix + "Recon:Epochs", timeout=5)["value"]) == 123

    from PIL import Image

    for name in ("workflow", "edge"):
        png = Image.open(out / f"{name}.png").convert("L")
        pixels = np.asarray(png, dtype=float)
        assert png.size[0] >= 600 and png.size[1] >= 500
        assert pixels.std() > 10 and len(np.unique(pixels)) > 20, f"{name}.png looks blank"
    if os.environ.get("PTYCHOFLOW_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        for name in ("workflow", "edge"):  # 256 colours keep the README's images small
            Image.open(out / f"{name}.png").convert("RGB").quantize(256).save(
                DOCS / f"{name}.png", optimize=True)
