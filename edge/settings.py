"""Settings of ``ptychoflow edge``: one dataclass, the ``[edge]`` TOML section and the flags."""

from __future__ import annotations

from dataclasses import dataclass

from ptychoflow.config import setting
from ptychoflow.edge.infer.engines import ENGINES as ENGINE_REGISTRY
from ptychoflow.edge.input.channels import split_name
from ptychoflow.edge.threads import POLICIES
from ptychoflow.geometry import Geometry
from ptychoflow.pvnames import DEFAULT_PREFIX, EDGE

ENGINES = ("auto", *ENGINE_REGISTRY)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EdgeSettings:
    """Everything a user sets for the edge service (defaults < ``[edge]`` in TOML < flags)."""

    prefix: str = setting(DEFAULT_PREFIX, "PV prefix of the edge PVs")
    input: str = setting("", "detector NTNDArray PV to follow (also settable via "
                             f"{EDGE.input.suffix}); "
                             "several, space-separated (a detector scattering its frames "
                             "over several PVs): one lane process each")
    model: str = setting("", "ONNX model to serve (model-vN.onnx, its card model-vN.json beside)")
    model_dir: str = setting("", "folder models may be loaded from (default: the folder of "
                                 "--model); paths outside it are refused")
    resume: bool = setting(True, "at start, serve the model this edge served last (the one "
                                 f"deployed by {EDGE.model_load.suffix}, recorded in the "
                                 "model folder) rather than --model, so a restarted edge "
                                 "does not fall back to an old model")
    engine: str = setting("auto", "inference engine", choices=ENGINES)
    device: str = setting("auto", "cpu, cuda or auto (cuda when an engine can use it)",
                          choices=DEVICES)
    workers: int = setting(1, "inference worker processes (one per GPU when there are several)")
    streams: int = setting(0, "inference streams in the edge process: batches run side by side, "
                               "each engine with threads/streams threads (0: one per core up "
                               "to 4 for ONNX Runtime on the CPU, else 1; workers = 1 only)")
    batch_size: int = setting(16, "largest micro-batch (a fixed-batch model uses its own)")
    latency_budget_ms: float = setting(5.0, "longest wait to fill a batch after its first frame")
    queue_size: int = setting(1024, "frames held before the oldest is dropped (bounds memory)")
    input_queue: int = setting(64, "frames the source holds for the edge while the edge's "
                                    "receiving thread is busy (pvRequest queueSize; beyond "
                                    "it frames are lost and counted): raise it for thousands "
                                    "of frames/s; costs up to that many frames of memory at "
                                    "the source")
    threads: int = setting(0, "intra-op threads per engine (0: all cores of this box)")
    fp16: bool = setting(True, "half precision: float16 on GPU engines (TensorRT, PyTorch on "
                               "CUDA), bfloat16 for OpenVINO on CPUs that have it")
    stitch: bool = setting(True, f"stitch predictions into {EDGE.stitched.suffix} "
                                 "(needs positions)")
    stitch_rate_hz: float = setting(10.0, f"most {EDGE.stitched.suffix} updates per second")
    stitch_max_size: int = setting(8192, "largest stitched map side in pixels (bounds memory)")
    stitch_process: bool = setting(False, "stitch in a process of its own, so the edge's "
                                          "Python thread never spends its turn on the map "
                                          "(for thousands of frames/s; one more process)")
    positions: str = setting("", "positions file (.npy/.csv/.txt x y in metres, or a scan .h5) "
                                 "used when frames carry no PositionX/PositionY; row = "
                                 "uniqueId - 1")
    position_x_pv: str = setting("", "motor readback PV of the x position in metres, each "
                                      "update time-stamped (a motor's .RBV): pvAccess, or "
                                      "Channel Access as ca://NAME; with --position-y-pv, for "
                                      "frames without PositionX/PositionY")
    position_y_pv: str = setting("", "motor readback PV of the y position (see --position-x-pv)")
    position_stream_pv: str = setting("", "pvAccess PV streaming positions (NTTable, or a "
                                           "structure: x, y and a uniqueId or timestamp "
                                           "column, POSIX seconds), as a PandA's position "
                                           "capture sends; for frames without PositionX/"
                                           "PositionY")
    position_x_column: str = setting("x", "x column of --position-stream-pv (PositionX "
                                          "also accepted)")
    position_y_column: str = setting("y", "y column of --position-stream-pv (PositionY "
                                          "also accepted)")
    position_tolerance_ms: float = setting(5.0, "a frame takes channel positions only from "
                                                "samples this close to its time stamp "
                                                "(never extrapolated); else it is unplaced")
    position_wait_ms: float = setting(200.0, "longest wait for channel positions after a "
                                             "batch's last frame arrived (positions may come "
                                             "later than frames), once per batch")
    position_hold_ms: float = setting(0.0, "motor readbacks: a sample also stands for frames "
                                           "up to this long after it when no other is within "
                                           "the tolerance, as a motor at rest posts nothing "
                                           "(the stepping axis of a raster fly scan); 0: never")
    position_history: int = setting(20000, "samples (or stream rows) kept per position axis; "
                                           "the newest are kept (bounds memory)")
    geometry: str = setting("", "how the detector's frames and the positions differ from "
                                "ptychoflow's conventions, e.g. 'transpose flip_rows x_sign=-1 "
                                "position_unit=um'; a model's card that records one wins, and "
                                "must agree (docs/files.md)")
    check_every: int = setting(10, "physics check: the prediction of every frame whose "
                                   "uniqueId is a multiple of this is compared with the frame "
                                   f"through the card's probe ({EDGE.phase.suffix} "
                                   "attribute Consistency, running value in "
                                   f"{EDGE.consistency.suffix}); 0: off (docs/edge.md, "
                                   "Physics check)")
    pixel_size_m: float = setting(0.0, "real-space pixel of the network output, for models "
                                       "without a card (metres)")
    scan_id_attribute: str = setting("ScanId", "frame attribute whose change starts a new map")
    scheduling: str = setting("batch", "Linux scheduling policy of the edge's threads: batch "
                                       "lets the stream's I/O wait for the end of the engine's "
                                       "time slice instead of preempting it at every frame",
                              choices=POLICIES)
    int8: bool = setting(False, "serve model-vN-int8.onnx in place of model-vN.onnx wherever "
                                f"that copy exists (--model, {EDGE.model_load.suffix}, the "
                                "IOC's deploy; "
                                "for CPU edges, see ptychoflow remote quantize)")
    trt_cache_dir: str = setting("", "TensorRT engine cache folder (default: <model_dir>/.trt)")
    writers: list[str] = setting([], "users allowed to write the edge's PVs, or role/GROUP "
                                     "for the members of an OS group of this host (empty: "
                                     "everyone; reading is always open); the IOC's user "
                                     "must be listed for its deploys")
    writer_hosts: list[str] = setting([], "hosts (names or addresses) allowed to write the "
                                          "edge's PVs (empty: any host); names are resolved "
                                          "at start; localhost, 127.0.0.1 or this host's own "
                                          "name admit every loopback client")

    def __post_init__(self) -> None:
        Geometry.parse(self.geometry)  # ValueError names the word it does not know
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.streams < 0:
            raise ValueError(f"streams must be 0 (automatic) or more, got {self.streams}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.latency_budget_ms < 0:
            raise ValueError(f"latency_budget_ms must be >= 0, got {self.latency_budget_ms}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {self.queue_size}")
        if self.input_queue < 1:
            raise ValueError(f"input_queue must be at least 1, got {self.input_queue}")
        if self.stitch_rate_hz <= 0:
            raise ValueError(f"stitch_rate_hz must be positive, got {self.stitch_rate_hz}")
        self._check_positions()
        for key in ("writers", "writer_hosts"):
            names = getattr(self, key)
            if not isinstance(names, list) or not all(
                    isinstance(n, str) and n and not any(c.isspace() for c in n) for n in names):
                raise ValueError(f"{key} must be a list of names without spaces, e.g. "
                                 f'{key} = ["operator"], got {names!r}')
        if self.check_every < 0:
            raise ValueError(f"check_every must be 0 (off) or more, got {self.check_every}")
        if self.pixel_size_m < 0:
            raise ValueError(f"pixel_size_m must be >= 0, got {self.pixel_size_m}")
        if self.scheduling not in POLICIES:
            raise ValueError(f"scheduling {self.scheduling!r} unknown; use one of {POLICIES}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} unknown; use one of {ENGINES}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} unknown; use one of {DEVICES}")

    def _check_positions(self) -> None:
        if bool(self.position_x_pv) != bool(self.position_y_pv):
            raise ValueError("give both --position-x-pv and --position-y-pv, or neither")
        given = [n for n, v in (("--positions", self.positions),
                                ("--position-x-pv/--position-y-pv", self.position_x_pv),
                                ("--position-stream-pv", self.position_stream_pv)) if v]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are alternatives for frames without "
                             "PositionX/PositionY; give one")
        for name in (self.position_x_pv, self.position_y_pv, self.position_stream_pv):
            if name:
                split_name(name)  # ValueError for an unknown scheme
        if self.position_stream_pv and split_name(self.position_stream_pv)[0] != "pva":
            raise ValueError(f"position stream {self.position_stream_pv}: a stream is an "
                             "NTTable, which only pvAccess carries; give its pvAccess name")
        if self.position_tolerance_ms < 0:
            raise ValueError(f"position_tolerance_ms must be >= 0, got "
                             f"{self.position_tolerance_ms}")
        if self.position_hold_ms < 0:
            raise ValueError(f"position_hold_ms must be >= 0, got {self.position_hold_ms}")
        if self.position_wait_ms < 0:
            raise ValueError(f"position_wait_ms must be >= 0, got {self.position_wait_ms}")
        if self.position_history < 2:
            raise ValueError(f"position_history must be at least 2, got {self.position_history}")
