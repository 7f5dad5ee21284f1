"""What NDCodec compression costs the edge: bytes saved on the network, time spent decoding.

A beamline may put areaDetector's NDCodec plugin in front of NDPluginPva; the
edge then decodes every frame in its input callback (:func:`ptychoflow.ntnda.read_frame`).
:func:`codec_costs` measures both sides on frames of the simulator's physics
(Poisson counts of a far-field scan), for the ``bench edge`` JSON;
:func:`sim_codec_args` is what a benchmark adds to its ``ptychoflow sim``
command line to stream compressed frames.
"""

from __future__ import annotations

import time
from typing import Any

NONE = "none"


def sim_codec_args(codec: str) -> list[str]:
    """The ``ptychoflow sim`` flags that send frames compressed with ``codec`` ("none": none)."""
    return [] if codec in ("", NONE) else ["--codec", codec]


def _decode_s(values: list[Any]) -> float:
    """Seconds to read every value as the edge's input monitor does."""
    from ptychoflow.ntnda import read_frame

    t0 = time.perf_counter()
    for v in values:
        read_frame(v)
    return time.perf_counter() - t0


def codec_costs(size: int, frames: int = 200) -> dict[str, dict[str, float]]:
    """Per codec ("none" first): compression ratio and decode time per frame on ``size`` frames.

    ``ratio`` is uncompressed over compressed bytes, ``bytes`` the compressed
    bytes per frame, ``decode_us`` the best of three passes of
    :func:`~ptychoflow.ntnda.read_frame` over NTNDArray values built as the
    simulator sends them (uint16 counts). A codec whose library is not installed
    here is left out.
    """
    from ptychoflow.codec import NAMES, CodecError
    from ptychoflow.ntnda import make_frame
    from ptychoflow.sim.physics import simulate_scan

    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    scan = simulate_scan(n_frames=frames, size=size)
    raw = scan.data[0].nbytes
    out: dict[str, dict[str, float]] = {}
    for name in (NONE, *NAMES):
        try:
            values = [make_frame(f, i + 1, 0.0, codec="" if name == NONE else name)
                      for i, f in enumerate(scan.data)]
        except CodecError:  # its library is not installed here
            continue
        sent = sum(int(v["compressedSize"]) for v in values) / frames
        best = min(_decode_s(values) for _ in range(3))
        out[name] = {"ratio": round(raw / sent, 2), "bytes": round(sent, 1),
                     "decode_us": round(best / frames * 1e6, 1)}
    return out
