"""Run as a subprocess: open the PyDM screens headless, operate them, dump what they show.

PyDM's plugins (pyepics for CA, p4p for PVA) read the EPICS variables of their
own process once, so the screens run apart from the test, in the environment
the test gives them (QT_QPA_PLATFORM=offscreen). The probe samples the widgets
every 0.25 s until the screens show live data (the edge's processed counter moved,
both edge images and the workflow's live phase hold finite pixels, the IOC's enum
strings arrived) or the timeout
passes; it writes Auto and Recon:Epochs through the widgets as an operator
would, saves a screenshot of each window and dumps the samples as JSON.
Usage: python pydm_probe.py PREFIX OUT_DIR TIMEOUT EPOCHS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydm import PyDMApplication
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from ptychoflow.gui import open_screens, save_screenshots, screen_folder


def image_stats(view: Any) -> dict[str, Any] | None:
    img = view.getImageItem().image
    if img is None:
        return None
    a = np.asarray(img, dtype=float)
    return {"shape": list(a.shape), "finite": bool(np.isfinite(a).all()),
            "std": float(np.nanstd(a)),
            # PyDM's image item is row-major (axis 1 is x): a ramp along x, drawn the right
            # way round, is the same in every row and differs along each
            "ramp_along_x": bool(a.ndim == 2 and np.ptp(a, axis=0).max() == 0
                                 and np.ptp(a, axis=1).min() > 0)}


def main() -> int:
    prefix, out, timeout, epochs = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    app = PyDMApplication(use_main_window=False, hide_nav_bar=True)
    windows = open_screens(["workflow", "edge"], prefix, screen_folder())
    for w in windows.values():
        w.resize(900, 1000)

    def widget(screen: str, name: str) -> Any:
        found = windows[screen].findChild(QWidget, name)
        assert found is not None, f"{screen} screen has no widget {name}"
        return found

    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    state = {"written": False}

    def sample() -> None:
        s = {
            "t": round(time.monotonic() - start, 2),
            "processed": widget("edge", "Edge_Processed_RBV").text(),
            "frame_rate": widget("edge", "Edge_FrameRate_RBV").text(),
            "edge_message": widget("edge", "Edge_Message_RBV").text(),
            "enable": widget("edge", "Edge_Enable").isChecked(),
            "phase": image_stats(widget("edge", "Edge_Phase")),
            "stitched": image_stats(widget("edge", "Edge_Stitched")),
            "state": widget("workflow", "Workflow_State_RBV").text(),
            "algorithms": [widget("workflow", "Recon_Algorithm").itemText(i)
                           for i in range(widget("workflow", "Recon_Algorithm").count())],
            "algorithm": widget("workflow", "Recon_Algorithm").currentText(),
            "recon_epochs": widget("workflow", "Recon_Epochs").text(),
            "auto": widget("workflow", "Workflow_Auto").isChecked(),
            "busy_connected": bool(widget("workflow", "Workflow_Busy_RBV")._connected),
            "live": image_stats(widget("workflow", "Recon_Phase_ArrayData")),
            "live_images": widget("workflow", "Recon_Phase_UniqueId_RBV").text(),
        }
        samples.append(s)
        if not state["written"] and s["algorithms"] and s["recon_epochs"]:
            # an operator ticks Auto and types a new epoch count, pressing Return
            widget("workflow", "Workflow_Auto").click()
            entry = widget("workflow", "Recon_Epochs")
            entry.setText(epochs)
            entry.send_value()
            state["written"] = True
        if done(samples) or time.monotonic() - start > timeout:
            finish()

    def done(ss: list[dict[str, Any]]) -> bool:
        counts = [int(x["processed"]) for x in ss if x["processed"].strip().isdigit()]
        last = ss[-1]
        return (len(set(counts)) >= 3 and all(last[k] and last[k]["finite"] and last[k]["std"] > 0
                                              for k in ("phase", "stitched", "live"))
                and last["auto"] and last["recon_epochs"] == epochs)

    def finish() -> None:
        timer.stop()
        shots = [str(p) for p in save_screenshots(windows, out)]
        (out / "probe.json").write_text(json.dumps({"samples": samples, "screenshots": shots},
                                                   indent=1))
        app.quit()

    timer = QTimer()
    timer.timeout.connect(sample)
    timer.start(250)
    return int(app.exec_())


if __name__ == "__main__":
    raise SystemExit(main())
