"""The physics check's cost per frame, for the ``bench edge`` JSON.

The edge checks every frame whose ``uniqueId`` is a multiple of ``check_every``
(:mod:`ptychoflow.edge.infer.physics`), on the publisher's thread (one input)
or in each lane process; :func:`check_costs` times that work on frames of the
simulator's physics, for a model that sees the whole frame (``size`` x
``size``) and one that bins it by two, so the figure can be set beside the
engine's time per frame. The benchmark's pipeline model has no probe, so the
pipeline figures are without the check.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def check_costs(size: int, frames: int = 64, batch: int = 16) -> dict[str, Any]:
    """Microseconds per checked frame (best of three) and per frame at the default ``k``."""
    from ptychoflow.edge.settings import EdgeSettings
    from ptychoflow.physcheck import ForwardModel
    from ptychoflow.preprocess import Preprocess
    from ptychoflow.sim.physics import simulate_scan

    scan = simulate_scan(n_frames=frames, size=size)
    assert scan.probe is not None  # the simulator always records its probe
    every = EdgeSettings().check_every
    out: dict[str, Any] = {"check_every_default": every, "batch": batch}
    for name, s in (("full", size), ("binned2", size // 2)):
        pre = Preprocess(s, None, "sqrt")
        # no crop: the output pixel is the frame's real-space pixel (remote/pairs.py)
        fm = ForwardModel.build(scan.probe, scan.object_pixel_size_m, pre,
                                scan.object_pixel_size_m)
        x = pre(scan.data)
        phase = np.random.default_rng(0).uniform(-1, 1, (frames, s, s)).astype(np.float32)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(0, frames, batch):
                fm.errors(x[i:i + batch], phase[i:i + batch])
            best = min(best, (time.perf_counter() - t0) / frames)
        out[f"{name}_{s}_us_per_checked_frame"] = round(best * 1e6, 1)
        if every:
            out[f"{name}_{s}_us_per_frame_at_default"] = round(best * 1e6 / every, 1)
    return out
