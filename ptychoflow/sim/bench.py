"""``ptychoflow bench sim``: our simulator against pvapy-ad-sim-server, same client, one run.

Both servers run in their own process on isolated loopback ports and stream
128x128 uint16 frames as fast as they can to the same p4p monitor in this
process; the rate is what the client received between its first and last
frame, and lost frames are gaps in ``uniqueId``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
from ptychoflow.pvnames import DETECTOR
from ptychoflow.sim.cli import CODEC_CHOICES

HELP = "detector simulator vs pvapy-ad-sim-server: frames/s delivered to a p4p client"


def register(parser: argparse.ArgumentParser) -> None:
    """Benchmark options."""
    parser.add_argument("--frames", type=int, default=3000, help="frames per stream")
    parser.add_argument("--size", type=int, default=128, help="frame size (pixels)")
    parser.add_argument("--queue", type=int, default=1000, help="client monitor queue size")
    parser.add_argument("--no-save", action="store_true",
                        help="do not save our stream to a scan file (saving is on by default, "
                             "as at a beamline)")
    parser.add_argument("--codec", choices=CODEC_CHOICES, default="none",
                        help="compress our frames as NDCodec does (pvapy-ad-sim-server's stay "
                             "uncompressed: it compresses only frames read from HDF5 files)")


@dataclass
class Tally:
    """What the client saw: ids and the arrival times of the first and last frame."""

    ids: list[int] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0
    changed: threading.Event = field(default_factory=threading.Event)

    def __call__(self, value: Any) -> None:
        uid = int(value["uniqueId"])
        if uid == 0:
            return
        now = time.perf_counter()
        if not self.ids:
            self.first = now
        self.last = now
        self.ids.append(uid)
        self.changed.set()

    def fps(self) -> float:
        span = self.last - self.first
        return (len(self.ids) - 1) / span if span > 0 and len(self.ids) > 1 else 0.0

    def lost(self) -> int:
        if not self.ids:
            return -1
        return (max(self.ids) - min(self.ids) + 1) - len(set(self.ids))

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Return once no frame has arrived for ``quiet`` seconds (or after ``limit``)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            self.changed.clear()
            if not self.changed.wait(quiet) and self.ids:
                return


def _wait_pv(ctx: Any, pv: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {pv} exited with {proc.returncode}")
        try:
            ctx.get(pv, timeout=1.0)
            return
        except Exception:  # noqa: BLE001 - p4p TimeoutError until the server is up
            continue
    raise RuntimeError(f"{pv} never answered")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _measure_ours(frames: int, size: int, queue: int, save: bool, codec: str = "none"
                  ) -> Tally:
    from p4p.client.thread import Context

    env = isolated_env()
    prefix = random_prefix("BENCH")
    out = tempfile.mkdtemp(prefix="ptychoflow-bench-")
    cmd = [sys.executable, "-m", "ptychoflow.cli", "--log-level", "WARNING", "sim",
           "--prefix", prefix, "--frames", str(frames), "--size", str(size), "--rate", "0",
           "--wait", "--delay", "0", "--out", out if save else "", "--codec", codec]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    tally = Tally()
    try:
        with Context("pva", conf=pva_conf(env), useenv=False, nt=False) as ctx:
            _wait_pv(ctx, DETECTOR.cam1_acquire.name(prefix), proc, timeout=120)
            sub = ctx.monitor(DETECTOR.pva1_image.name(prefix), tally,
                              request=f"record[queueSize={queue}]")
            time.sleep(0.5)
            ctx.put(DETECTOR.cam1_acquire.name(prefix), 1)
            tally.wait_quiet(2.0, 120)
            sub.close()
    finally:
        _stop(proc)
        shutil.rmtree(out, ignore_errors=True)
    return tally


def _measure_adsim(frames: int, size: int, queue: int) -> Tally:
    from p4p.client.thread import Context

    exe = shutil.which("pvapy-ad-sim-server") or str(
        __import__("pathlib").Path(sys.executable).with_name("pvapy-ad-sim-server"))
    env = isolated_env()
    name = random_prefix("ADSIM") + "Image"
    # -fps far above what any client takes; -rt stops it after about `frames` frames' time
    cmd = [exe, "-cn", name, "-nx", str(size), "-ny", str(size), "-dt", "uint16",
           "-fps", "100000", "-nf", "100", "-rt", "8", "-std", "3", "-rp", "1000"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tally = Tally()
    try:
        with Context("pva", conf=pva_conf(env), useenv=False, nt=False) as ctx:
            _wait_pv(ctx, name, proc, timeout=60)
            sub = ctx.monitor(name, tally, request=f"record[queueSize={queue}]")
            tally.wait_quiet(2.0, 60)
            sub.close()
    finally:
        _stop(proc)
    return tally


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure both servers and return the figures."""
    codec = getattr(args, "codec", "none")
    ours = _measure_ours(args.frames, args.size, args.queue, not args.no_save, codec)
    ref = _measure_adsim(args.frames, args.size, args.queue)
    sim_fps, ad_fps = ours.fps(), ref.fps()
    return {
        "frame": f"{args.size}x{args.size} uint16",
        "sim_fps": round(sim_fps, 1), "sim_frames": len(ours.ids), "sim_lost": ours.lost(),
        "sim_saving": not args.no_save, "sim_codec": codec,
        "adsim_fps": round(ad_fps, 1), "adsim_frames": len(ref.ids), "adsim_lost": ref.lost(),
        "ratio": round(sim_fps / ad_fps, 2) if ad_fps else None,
        "ok": bool(ad_fps and sim_fps / ad_fps >= 1.0 and ours.lost() == 0
                   and len(ours.ids) == args.frames),
    }
