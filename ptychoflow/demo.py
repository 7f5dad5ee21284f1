"""``ptychoflow demo``: the whole workflow on one machine, end to end.

It starts the control IOC, the edge service and, scan after scan, the detector
simulator, all on an isolated loopback EPICS network, and lets the IOC's Auto
mode do the rest: each finished scan file is transferred, reconstructed with
rPIE, added to the training set, the network is trained (warm start), exported
and hot-swapped into the running edge, which meanwhile turns every frame of
the next scan into a phase image and a stitched map. What it prints is what a
beamline user would watch on the PVs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychoflow.config import add_arguments, resolve, setting
from ptychoflow.epicsenv import servers_network
from ptychoflow.pvnames import CONTROL, DEFAULT_PREFIX, DETECTOR, EDGE, STATES, PVSpec

HELP = "end-to-end demo on this machine: simulator, edge, IOC, rPIE and continuous training"


@dataclass
class DemoSettings:
    """Size of the demo; the defaults finish in a few minutes on a 2-core CPU."""

    out: str = setting("demo-output", "folder for this demo's scans, runs, models and logs")
    scans: int = setting(2, "scans to acquire and learn from before the final scan")
    frames: int = setting(400, "frames per scan")
    size: int = setting(64, "frame size in pixels", choices=[64, 128, 256, 512])
    rate: float = setting(200.0, "detector frame rate (Hz)")
    recon_epochs: int = setting(25, "rPIE epochs per scan")
    train_epochs: int = setting(80, "training epochs per scan")
    timeout: float = setting(1800.0, "give up after this many seconds per run")
    int8: bool = setting(False, "each export also writes an int8 copy and the edge serves it "
                                "(the IOC's int8_models, the edge's --int8)")
    keep_running: bool = setting(False, "after the loop, leave simulator, IOC and edge running "
                                        "(Ctrl-C stops them) and print how to open the screens")
    json: bool = setting(False, "print the summary as one JSON object on one line, the last "
                                "line of stdout")
    compute: str = setting("Local", "where the IOC runs the stages: Local worker processes, "
                                    "or Parsl (a HighThroughputExecutor on this host, as on a "
                                    "cluster)", choices=["Local", "Parsl"])

    def __post_init__(self) -> None:
        if self.scans < 1:
            raise ValueError("the demo needs at least one scan to learn from")


def register(parser: argparse.ArgumentParser) -> None:
    """Flags for every :class:`DemoSettings` field."""
    add_arguments(parser, DemoSettings)
    parser.set_defaults(func=run)


class Processes:
    """The demo's server processes: started with a log file each, stopped by pid."""

    def __init__(self, envs: dict[str, dict[str, str]], logs: Path) -> None:
        self.envs = envs
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        p = subprocess.Popen([sys.executable, "-m", "ptychoflow.cli", *args],
                             env=self.envs[name], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        self.procs[name] = p
        return p

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see "
                                   f"{self.logs / (name + '.log')}")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _value(v: Any) -> Any:
    """A plain Python value from what p4p returns: numbers, strings, enum indices.

    QSRV serves long strings as char arrays and enums as {index, choices}; both
    are turned into what a user would print.
    """
    raw = v.raw.value if hasattr(v, "raw") else v
    if isinstance(raw, str | int | float):
        return raw
    if hasattr(raw, "dtype") and raw.ndim == 1 and raw.dtype.kind in "iu":
        return bytes(raw.astype("uint8")).split(b"\0", 1)[0].decode(errors="replace")
    try:
        return int(raw["index"])
    except (KeyError, TypeError, ValueError):
        return raw


class Demo:
    """One demo session: processes, PV access and the narrative printed to the user."""

    def __init__(self, s: DemoSettings) -> None:
        self.s = s
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.root = Path(s.out).resolve() / stamp
        self.scans_dir = self.root / "scans"
        self.work = self.root / "work"
        self.logs = self.root / "logs"
        for d in (self.scans_dir, self.work, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.envs = servers_network(("sim", "ioc", "edge"), client="ioc")
        self.env = self.envs["client"]
        self.p = DEFAULT_PREFIX
        self.procs = Processes(self.envs, self.logs)
        self.ctx: Any = None  # made once every server answers (see start_services)
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)

    def pv(self, spec: PVSpec) -> str:
        """The PV's name under the demo's prefix."""
        return spec.name(self.p)

    def get(self, spec: PVSpec, timeout: float = 5.0) -> Any:
        return _value(self.ctx.get(self.pv(spec), timeout=timeout))

    def put(self, spec: PVSpec, value: Any) -> None:
        self.ctx.put(self.pv(spec), value, timeout=10.0)

    def wait_pv(self, server: str, spec: PVSpec, timeout: float = 60.0) -> None:
        """Wait for ``server`` to serve ``spec``.

        The client is made once the server's port accepts connections, and asks that
        server alone: a name server not listening yet makes pvxs print a "Connection
        refused" error to the terminal, which reads as a failure to whoever watches.
        A fresh client each try, as p4p retries a name server that refused it only
        after many seconds.
        """
        import socket

        from p4p.client.thread import Context

        from ptychoflow.epicsenv import pva_conf

        port = int(self.envs[server]["EPICS_PVA_SERVER_PORT"])
        conf = dict(pva_conf(self.env), EPICS_PVA_NAME_SERVERS=f"127.0.0.1:{port}")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.procs.check()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            except OSError:
                time.sleep(0.2)  # not listening yet
                continue
            with Context("pva", conf=conf, useenv=False) as ctx:
                try:
                    ctx.get(self.pv(spec), timeout=1.0)
                    return
                except Exception:  # noqa: BLE001 - not serving it yet
                    time.sleep(0.3)
        raise RuntimeError(f"{self.pv(spec)} did not answer within {timeout} s")

    def start_services(self) -> None:
        from p4p.client.thread import Context

        from ptychoflow.epicsenv import pva_conf

        self.procs.start("sim", [
            "sim", "--prefix", self.p, "--frames", str(self.s.frames), "--size", str(self.s.size),
            "--rate", str(self.s.rate), "--out", str(self.scans_dir), "--wait", "--serve"])
        self.wait_pv("sim", DETECTOR.cam1_acquire, timeout=120)
        image = self.pv(DETECTOR.pva1_image)
        self.say(f"detector simulator up: {image}, {self.s.frames} frames of "
                 f"{self.s.size}x{self.s.size} at {self.s.rate:g} Hz per scan")
        # the edge first: the IOC records its rates for the run reports from its start on
        models = self.work / "models"
        models.mkdir(parents=True, exist_ok=True)
        self.procs.start("edge", ["edge", "--prefix", self.p, "--input", image,
                                  "--model-dir", str(models)]
                         + (["--int8"] if self.s.int8 else []))
        self.wait_pv("edge", EDGE.processed, timeout=120)
        cfg = self.root / "ptychoflow.toml"
        cfg.write_text(
            f'[ioc]\nprefix = "{self.p}"\ndata_root = "{self.scans_dir}"\n'
            f'work_root = "{self.work}"\nedge_prefix = "{self.p}"\n'
            f'int8_models = {"true" if self.s.int8 else "false"}\n'
            + ('[compute.parsl]\nprovider = "local"\nworkers = 2\n'
               if self.s.compute == "Parsl" else
               # every core to each stage: they rarely overlap here; training is the longest
               f"[compute.local]\nthreads_per_worker = {os.cpu_count() or 1}\n"))
        self.procs.start("ioc", ["--config", str(cfg), "ioc"])
        self.wait_pv("ioc", CONTROL.workflow_state, timeout=120)
        self.say(f"IOC up: {self.p}Workflow:* over CA and PVA")
        self.ctx = Context("pva", conf=pva_conf(self.env), useenv=False)
        end = time.monotonic() + 60
        while not str(self.get(EDGE.message)).startswith("connected"):
            if time.monotonic() > end:
                raise RuntimeError("the edge did not connect to the detector: "
                                   f"{self.get(EDGE.message)}")
            time.sleep(0.2)
        self.say(f"edge up: following {image}, publishing {self.pv(EDGE.phase)} and "
                 f"{self.pv(EDGE.stitched)}")
        self.put(CONTROL.recon_epochs, self.s.recon_epochs)
        self.put(CONTROL.train_epochs, self.s.train_epochs)
        self.put(CONTROL.compute_backend, self.s.compute)
        self.put(CONTROL.workflow_auto, 1)
        self.say(f"{CONTROL.workflow_auto.suffix} = On: every complete scan file in "
                 f"{self.scans_dir} starts a run")

    def acquire(self, k: int) -> None:
        before = self.get(EDGE.processed)
        dropped_before = self.get(EDGE.dropped)
        version = self.get(EDGE.model_version)
        self.put(DETECTOR.cam1_acquire, 1)
        self.say(f"scan {k}: {DETECTOR.cam1_acquire.suffix} = 1, the detector streams a new "
                 "region of the sample")
        rates, latencies = [], []
        time.sleep(0.5)
        while self.get(DETECTOR.cam1_acquire):  # what an operator's screen shows meanwhile
            rate = float(self.get(EDGE.frame_rate))
            if rate > 0:
                rates.append(rate)
                latencies.append(float(self.get(EDGE.latency)))
            self.procs.check()
            time.sleep(0.5)
        time.sleep(1.5)  # the edge's status PVs update once a second
        done = self.get(EDGE.processed) - before
        dropped = self.get(EDGE.dropped) - dropped_before
        name = Path(str(self.get(DETECTOR.hdf1_full_file_name))).name
        if version == 0:
            self.say(f"scan {k}: saved as {name}; the edge has no model yet, so its {dropped} "
                     f"frames are counted in {EDGE.dropped.suffix}")
            return
        speed = (f", {max(rates):.0f} frames/s, latency (frame in to phase out) "
                 f"{max(latencies):.1f} ms in its slowest second" if rates else "")
        self.say(f"scan {k}: saved as {name}; edge processed {done} frames with model "
                 f"v{version}, dropped {dropped}, bad {self.get(EDGE.bad_frames)}{speed}")

    def follow_run(self, previous_run: int) -> dict[str, Any]:
        """Print the run's states and progress until it ends; return its summary."""
        end = time.monotonic() + self.s.timeout
        while self.get(CONTROL.workflow_run_id) == previous_run:
            if time.monotonic() > end:
                raise RuntimeError("the IOC did not start a run for the new scan")
            self.procs.check()
            time.sleep(0.2)
        run_id = self.get(CONTROL.workflow_run_id)
        last_state, last_pct = "", -10.0
        while True:
            self.procs.check()
            state = STATES[int(self.get(CONTROL.workflow_state))]
            pct = float(self.get(CONTROL.workflow_progress))
            if state != last_state or pct >= last_pct + 25:
                extra = ""
                if state == "Reconstructing":
                    extra = (f" epoch {self.get(CONTROL.recon_epoch)}, error "
                             f"{self.get(CONTROL.recon_error):.4g}")
                elif state == "Training":
                    extra = (f" epoch {self.get(CONTROL.train_epoch)}, val loss "
                             f"{self.get(CONTROL.train_val_loss):.4g}")
                self.say(f"run {run_id}: {state} {pct:3.0f} %{extra}")
                last_state, last_pct = state, pct
            if state in ("Done", "Failed", "Aborted") and not self.get(CONTROL.workflow_busy):
                break
            if time.monotonic() > end:
                raise RuntimeError(f"run {run_id} did not finish in {self.s.timeout} s")
            time.sleep(0.5)
        summary = {"run": run_id, "state": state, "message": self.get(CONTROL.workflow_message),
                   "model_version": self.get(CONTROL.model_version),
                   "best_val_loss": round(float(self.get(CONTROL.train_best_val_loss)), 5),
                   "quality_ssim": round(float(self.get(CONTROL.model_quality)), 3)}
        self.say(f"run {run_id}: {summary['message']} (SSIM of the network against rPIE "
                 f"{summary['quality_ssim']}, best validation loss {summary['best_val_loss']})")
        # the IOC writes the run's report just after the run ends
        while (state == "Done" and f"run-{run_id:05d}" not in self.get(CONTROL.workflow_report)
               and time.monotonic() < end):
            time.sleep(0.2)
        summary["report"] = self.get(CONTROL.workflow_report)
        self.say(f"run {run_id}: report {summary['report'] or '(none)'}")
        if state != "Done":
            raise RuntimeError(f"run {run_id} ended {state}: {summary['message']}")
        return summary

    def wait_for_model(self, version: int, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while self.get(EDGE.model_version) != version:
            if time.monotonic() > end:
                raise RuntimeError(f"the edge did not load model v{version}: "
                                   f"{self.get(EDGE.message)}")
            time.sleep(0.2)
        # the file the edge chose for that version (its own rule: the int8 copy under --int8)
        from ptychoflow.edge.infer.modelcheck import resolve_model_path

        served = resolve_model_path(str(version), self.work / "models", self.s.int8).name
        self.say(f"edge now serves model v{version} ({served}) (hot swap, no restart)")

    def save_stitched(self) -> Path | None:
        import numpy as np

        from ptychoflow.ntnda import read_frame

        try:
            from PIL import Image
        except ModuleNotFoundError:
            return None
        raw = self.ctx.get(self.pv(EDGE.stitched)).raw
        img = read_frame(raw).array.astype(np.float64)
        if img.size == 0 or not np.isfinite(img).any():
            return None
        lo, hi = np.nanpercentile(img, [1, 99])
        scaled = np.clip((np.nan_to_num(img, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
        path = self.root / "stitched-phase.png"
        zoom = max(1, 512 // max(scaled.shape))  # a map of a few hundred pixels, enlarged
        big = np.kron(scaled, np.ones((zoom, zoom)))
        Image.fromarray((big * 255).astype(np.uint8)).save(path)
        return path


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 only if every run ended Done and the edge served the models."""
    s = resolve(DemoSettings, "demo", args)
    # Ctrl-C (even where a shell's background job ignores it) and a kill stop the servers too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = Demo(s)
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(demo.env.items())
                       if k.startswith("EPICS_") and k != "EPICS_PVA_SERVER_PORT")
    print(f"ptychoflow demo: everything under {demo.root}\n"
          f"  EPICS on loopback only; to watch with your own clients:\n  export {exports}",
          flush=True)
    runs: list[dict[str, Any]] = []
    try:
        demo.start_services()
        for k in range(1, s.scans + 1):
            previous = demo.get(CONTROL.workflow_run_id)
            demo.acquire(k)
            summary = demo.follow_run(previous)
            runs.append(summary)
            demo.wait_for_model(summary["model_version"])
        demo.acquire(s.scans + 1)
        png = demo.save_stitched()
        if png:
            demo.say(f"stitched phase map of the last scan: {png}")
        result = {"runs": runs, "folder": str(demo.root),
                  "elapsed_s": round(time.monotonic() - demo.t0, 1),
                  "report": runs[-1].get("report", "") if runs else ""}
        if not s.json:
            print(json.dumps(result, indent=2), flush=True)
        if s.keep_running:
            keep_running(demo, exports)
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"ptychoflow demo: stopped: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        if demo.ctx is not None:
            demo.ctx.close()
        demo.procs.stop_all()
    if s.json:
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def keep_running(demo: Demo, exports: str) -> None:
    """Leave the services up until Ctrl-C or SIGTERM; say how to watch them."""
    p = demo.p
    demo.say("simulator, IOC and edge keep running; in another terminal:\n"
             f"  export {exports}\n"
             f"  ptychoflow gui --prefix {p}        # the PyDM screens (workflow and edge)\n"
             f"  ptychoflow status --prefix {p}     # the same in the terminal\n"
             f"  pvput {DETECTOR.cam1_acquire.name(p)} 1            # acquire another scan "
             "(Auto runs it)\n"
             "Ctrl-C stops the demo")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (run's handlers)
        pass
