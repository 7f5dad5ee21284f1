"""``ptychoflow sim``: the detector simulator on the command line."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ptychoflow.config import add_arguments, resolve, setting
from ptychoflow.pvnames import DEFAULT_PREFIX, DETECTOR

if TYPE_CHECKING:
    from ptychoflow.scanfile import Scan

HELP = "detector simulator: stream a ptychography scan as NTNDArray frames and save it"

log = logging.getLogger("ptychoflow.sim")

# ptychoflow.codec.NAMES (checked by its tests), spelled here so that the CLI imports no numpy
CODEC_CHOICES = ("none", "lz4", "bslz4", "blosc", "zlib", "lz4hdf5")


@dataclass
class SimSettings:
    """Everything ``ptychoflow sim`` can be told, from ``[sim]`` in the TOML file or flags."""

    prefix: str = setting(DEFAULT_PREFIX, "PV prefix $(P)")
    frames: int = setting(963, "scan points (frames) of a simulated scan")
    size: int = setting(128, "frame size in pixels", choices=[64, 128, 256, 512])
    dtype: str = setting("uint16", "detector counts type", choices=["uint16", "int32"])
    rate: float = setting(100.0, "frames per second, 0 = as fast as possible")
    tick_ms: float = setting(0.0, "pace on a clock of this period: each wake-up posts every "
                                  "frame due by then, as a detector ships frames in bursts; "
                                  "0: one wake-up per frame")
    scatter: int = setting(1, "serve the frames over this many PVs, "
                              f"{DETECTOR.pva1_image.suffix} ... PvaK:Image, "
                              "in turn (areaDetector's NDPluginScatter before K NDPluginPva); "
                              "an edge follows them with one lane process each")
    step: float = setting(50e-9, "scan step in metres (Fermat spiral)")
    photons: float = setting(1e6, "photons per frame through the sample")
    probe: str = setting("zoneplate", "probe kind", choices=["zoneplate", "gaussian"])
    probe_diameter: float = setting(0.0, "probe diameter in pixels (0: a quarter of the frame)")
    sample: str = setting("", "object: empty for the test pattern, an image file, or a scan "
                              "file whose truth is reused")
    energy: float = setting(8800.0, "photon energy in eV")
    distance: float = setting(2.0, "sample-detector distance in metres")
    pixel_size: float = setting(75e-6, "detector pixel size in metres")
    seed: int = setting(0, "random seed (object blobs and photon noise)")
    out: str = setting("scans", "folder for the scan files; empty: do not save")
    name: str = setting("scan", "scan file name stem: NAME_0001.h5, ...")
    replay: str = setting("", "stream this scan file (any layout read_scan reads: ours, CXI, "
                              "an APS Velociprobe *_master.h5, the Siemens-star .npz.bz2) "
                              "instead of simulating")
    wait: bool = setting(False, "do not start at once: wait for a put to "
                                f"{DETECTOR.cam1_acquire.suffix}")
    serve: bool = setting(False, "keep serving after the scan: each further "
                                 f"{DETECTOR.cam1_acquire.suffix} "
                                 "scans a new region of the sample (seed + n), or replays "
                                 "the file again; default: exit when the scan is done")
    delay: float = setting(1.0, "seconds to wait before starting, so clients can connect")
    codec: str = setting("none", "compress the frames as areaDetector's NDCodec plugin does "
                                 "before NDPluginPva (lz4, bslz4: bitshuffle+LZ4, blosc, ...); "
                                 "none: uncompressed", choices=CODEC_CHOICES)

    stream_frames: int = setting(0, "beside each scan file also write its frames in chunks of "
                                    "at least this many (NAME.stream/), which the IOC ships "
                                    "and reconstructs while the scan goes on; 0: off")
    stream_seconds: float = setting(0.0, "also flush a chunk after this many seconds (s; 0: "
                                         "only by --stream-frames)")

    def __post_init__(self) -> None:
        if self.stream_frames < 0 or not self.stream_seconds >= 0:
            raise ValueError("stream_frames and stream_seconds must be >= 0")
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 (0 = as fast as possible), got {self.rate}")
        if not self.tick_ms >= 0:
            raise ValueError(f"tick_ms must be >= 0, got {self.tick_ms}")
        if self.scatter < 1:
            raise ValueError(f"scatter must be at least 1, got {self.scatter}")
        if not self.prefix:
            raise ValueError("prefix must not be empty")
        if self.codec not in CODEC_CHOICES:
            raise ValueError(f"codec must be one of {', '.join(CODEC_CHOICES)}, "
                             f"not {self.codec!r}")


def register(parser: argparse.ArgumentParser) -> None:
    """Flags for every :class:`SimSettings` field."""
    add_arguments(parser, SimSettings)
    parser.set_defaults(func=run)


def load_scan(s: SimSettings, acquisition: int = 1) -> Scan:
    """The scan to stream: a replayed file, or a simulation (a new region per acquisition)."""
    if s.replay:
        from ptychoflow.scanfile import read_scan

        return read_scan(s.replay)
    from ptychoflow.sim.physics import simulate_scan

    return simulate_scan(n_frames=s.frames, size=s.size, step_m=s.step, photons=s.photons,
                         dtype=s.dtype, probe=s.probe,
                         probe_diameter_px=s.probe_diameter or None, obj=s.sample or None,
                         seed=s.seed + acquisition - 1, energy_ev=s.energy,
                         distance_m=s.distance, pixel_size_m=s.pixel_size)


def run(args: argparse.Namespace) -> int:
    """Simulate (or load) the scan, then serve it until done or interrupted."""
    from ptychoflow.chunks import ChunkPolicy
    from ptychoflow.codec import require
    from ptychoflow.scanfile import ScanFileError
    from ptychoflow.sim.server import DetectorSimulator, serve

    s = resolve(SimSettings, "sim", args)
    codec = "" if s.codec == "none" else s.codec
    try:
        if codec:
            require(codec)  # its library is here: refused now, not at the first frame
        scan = load_scan(s)
    except (ScanFileError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sim = DetectorSimulator(s.prefix, scan, rate=s.rate, tick_s=s.tick_ms / 1000.0,
                            out_dir=Path(s.out).resolve() if s.out else None, name=s.name,
                            next_scan=None if s.replay else lambda n: load_scan(s, n),
                            scatter=s.scatter, codec=codec,
                            chunks=ChunkPolicy(s.stream_frames, s.stream_seconds))
    serve(sim, acquire=not s.wait, keep_serving=s.serve or s.wait, stop=stop, delay=s.delay)
    if sim.last_file is not None:
        print(f"scan file: {sim.last_file}", flush=True)
    return 0
