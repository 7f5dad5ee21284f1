"""``ptychoflow edge``: follow a detector, publish predictions and the stitched map.

Imports nothing heavy at module level (``ptychoflow --help`` must work on a
box without onnxruntime); stops cleanly, exit status 0, on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType

from ptychoflow.config import add_arguments, resolve

HELP = "edge inference: NTNDArray frames in, phase images and a stitched map out (PVA)"

log = logging.getLogger(__name__)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the edge settings as flags."""
    from ptychoflow.edge.settings import EdgeSettings

    add_arguments(parser, EdgeSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    # OpenMP's threads spin after each parallel region by default: bitshuffle's (the
    # bslz4 decoder) burnt 400 us of CPU per 128x128 frame on 2 cores between frames,
    # 60 us when they sleep instead. Set before any library loads OpenMP; lanes inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ptychoflow.edge.infer.modelcheck import ModelError
    from ptychoflow.edge.service import EdgeService
    from ptychoflow.edge.settings import EdgeSettings
    from ptychoflow.edge.threads import level_realtime_threads, set_policy

    settings = resolve(EdgeSettings, "edge", args)
    # before any thread or worker process exists, so all of them inherit it
    set_policy(settings.scheduling)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            service = EdgeService(settings)
        except (ModelError, ValueError, OSError) as exc:  # model, positions file, ports
            log.error("cannot serve: %s", exc)
            return 2
        # the pvAccess server's and client's threads exist now
        n = level_realtime_threads(settings.scheduling)
        if n:
            log.info("%d real-time EPICS thread(s) now run under the %s policy", n,
                     settings.scheduling)
        log.info("edge serving under %s", settings.prefix)
        try:
            while not done.wait(0.5):
                pass
        finally:
            service.stop()
            log.info("edge stopped: %d frames processed, %d missed, %d dropped, %d bad",
                     service.processed, service.missed, service.dropped, service.bad)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0
