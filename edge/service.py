"""The edge service: frames in, predictions and the stitched map out.

Frames come in through a :class:`~ptychoflow.edge.messages.FrameSource`: an
:class:`~ptychoflow.edge.input.intake.Intake` on threads of this process (one
input PV, the default), or a :class:`~ptychoflow.edge.lanes.parent.LaneSet`,
one process per input PV, when the detector's frames are split over several
PVs (areaDetector's NDPluginScatter feeding several NDPluginPva). Either puts
finished batches on one short queue, in order per input; the
:class:`~ptychoflow.edge.output.publisher.Publisher` takes them off, posts
``Phase`` (and ``Amplitude``), stitches, and updates the status PVs. All the
edge's PVs are served by this process whatever the number of lanes; their put
handlers are registered here, each next to its PV.
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Mapping
from pathlib import Path

from ptychoflow.edge.infer.hotswap import Served, auto_streams, prepare
from ptychoflow.edge.infer.resume import ServingRecord, Start, choose, load_first, start_message
from ptychoflow.edge.input.intake import Intake
from ptychoflow.edge.lanes.parent import LaneSet
from ptychoflow.edge.messages import FrameSource, ModelNote, QueueItem
from ptychoflow.edge.output.publisher import Publisher
from ptychoflow.edge.output.pvaserver import EdgeServer, WriteGuard
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.pvnames import DETECTOR, EDGE

MAX_PV_NAME = 255  # longer than any beamline's PV names; a 100 kB put is a mistake


def split_inputs(text: str) -> list[str]:
    """Input PV names from ``--input`` or an ``Edge:Input`` put: separated by spaces or
    commas. A name too long or with control characters raises ValueError (the put is
    refused): it can only be a paste gone wrong, and the edge would search for it for ever.
    """
    names = [t for t in text.replace(",", " ").split() if t]
    for name in names:
        if len(name) > MAX_PV_NAME or not name.isprintable():
            raise ValueError(f"{EDGE.input.suffix}: {name[:40]!r}... is not a PV name (over "
                             f"{MAX_PV_NAME} characters or control characters); put the "
                             f"detector's image PV, e.g. {DETECTOR.pva1_image.name('13SIM1:')}")
    return names


class EdgeService:
    """Runs the edge until :meth:`stop`; ``conf`` is the EPICS_PVA* config (None: environment)."""

    def __init__(self, settings: EdgeSettings, conf: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        if not settings.model and not settings.model_dir:
            raise ValueError("no model given; pass --model model-vN.onnx, or --model-dir DIR "
                             f"to start without one and load it later with "
                             f"{EDGE.model_load.suffix}")
        model_path = Path(settings.model).expanduser().resolve() if settings.model else None
        self.model_dir = (Path(settings.model_dir).expanduser().resolve() if settings.model_dir
                          else model_path.parent if model_path else Path.cwd())
        inputs = split_inputs(settings.input)
        self.n_lanes = len(inputs) if len(inputs) > 1 else 1
        # batches in flight: two per engine that can run at once keeps every engine busy
        # while the frames not yet batched wait in the drop-oldest queue; lanes each hold
        # their own in flight and hand over finished ones
        parallel = settings.workers * (settings.streams or auto_streams(settings.threads))
        self._fifo: queue.Queue[QueueItem] = queue.Queue(maxsize=max(2 * parallel + 1,
                                                                     4 * self.n_lanes))
        self.server = EdgeServer(settings.prefix, conf,
                                 WriteGuard(settings.writers, settings.writer_hosts))
        self.record = ServingRecord(self.model_dir, settings.prefix,
                                    str(model_path) if model_path else "")
        self.source: FrameSource
        try:
            start = choose(settings, self.model_dir, self.record)
            if self.n_lanes > 1:
                def lanes(spec: str) -> LaneSet:
                    return LaneSet(dataclasses.replace(settings, model=spec), self.model_dir,
                                   inputs, self._fifo, self.message, conf)

                self.source, start = load_first(start, lanes)
            else:
                # Without a model the edge still serves its PVs and follows the input, so
                # the first model of a beamtime can be deployed to it like any later one.
                def load(spec: str) -> Served | None:
                    return prepare(spec, settings, self.model_dir) if spec else None

                served, start = load_first(start, load)
                self.source = Intake(settings, self.model_dir, served, self._fifo,
                                     self.message, conf)
        except BaseException:
            self.server.close()
            raise
        self.publisher = Publisher(settings, self.server, self._fifo, self.source,
                                   self.message, on_serving=self.record.write)
        self.server.on_put(EDGE.stitched_reset, self._on_reset)
        self.server.on_put(EDGE.enable, self._on_enable)
        self.server.on_put(EDGE.input, self._on_input)
        self.server.on_put(EDGE.model_load, self.source.request)
        model = self.source.model
        self.server.post_scalar(EDGE.model_version, model.version if model else 0)
        self.server.post_scalar(EDGE.input, settings.input)
        if model is not None:
            self.record.write(model)  # what serves now is what a restart comes back to
        self.publisher.start()
        self._say_start(start, model)
        self.source.start()

    def _say_start(self, start: Start, model: ModelNote | None) -> None:
        if model is not None:
            self.message(start_message(start, model, self.settings)
                         + (f"; {model.check}" if model.check else ""))
        else:
            self.message(f"no model yet: put a model-vN.onnx under {self.model_dir} "
                         f"to {EDGE.model_load.suffix}"
                         + (f"; {start.why_not}" if start.why_not else ""))

    # ---- put handlers ------------------------------------------------------------------
    def _on_reset(self, value: int) -> None:
        if value:
            self.publisher.reset_requested.set()

    def _on_enable(self, value: int) -> None:
        self.source.set_enabled(bool(value))
        self.message("inference enabled" if value else "inference disabled; frames "
                     "are discarded")

    def _on_input(self, value: str) -> None:
        self.source.follow(split_inputs(value))  # ValueError refuses the put

    def message(self, text: str) -> None:
        """Say something on Message_RBV (and in the log)."""
        self.server.set_message(text)

    # ---- counters ----------------------------------------------------------------------
    @property
    def processed(self) -> int:
        """Frames published."""
        return self.publisher.processed

    @property
    def bad(self) -> int:
        """Frames skipped as bad, wherever they were found."""
        return self.publisher.bad

    @property
    def missed(self) -> int:
        """Frames that never reached the edge."""
        return self.source.missed

    @property
    def dropped(self) -> int:
        """Frames received and lost here: queue overflow, no model loaded."""
        return self.source.dropped

    # ---- lifetime ----------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the publisher has ended (True) or ``timeout`` passes (False)."""
        return self.publisher.join(timeout)

    def stop(self) -> None:
        """Stop following, finish the frames in hand, publish the last status, close."""
        self.source.stop()  # puts CLOSE on the queue once every frame in hand is out
        self.publisher.join(60)
        self.source.close()
        self.server.close()
