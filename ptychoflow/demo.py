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
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychoflow.config import add_arguments, resolve, setting
from ptychoflow.pvnames import DEFAULT_PREFIX, STATES

HELP = "end-to-end demo on this machine: simulator, edge, IOC, rPIE and continuous training"


@dataclass
class DemoSettings:
    """Size of the demo; the defaults finish in a few minutes on a 2-core CPU."""

    out: str = setting("demo-output", "folder for this demo's scans, runs, models and logs")
    scans: int = setting(2, "scans to acquire and learn from before the final scan")
    frames: int = setting(400, "frames per scan")
    size: int = setting(64, "frame size in pixels", choices=[64, 128, 256, 512])
    rate: float = setting(200.0, "detector frame rate (Hz)")
    recon_epochs: int = setting(40, "rPIE epochs per scan")
    train_epochs: int = setting(30, "training epochs per scan")
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


def demo_network() -> dict[str, dict[str, str]]:
    """One loopback EPICS network for the demo: a PVA port per server, all of them name servers.

    Several PVA servers on one host cannot share a UDP search port reliably (a
    unicast search reaches only one socket), so every server gets its own TCP
    port and every client searches all of them directly (EPICS_PVA_NAME_SERVERS).
    """
    from ptychoflow.epicsenv import free_port, isolated_env

    base = isolated_env()
    ports = {name: free_port() for name in ("sim", "ioc", "edge")}
    base["EPICS_PVA_NAME_SERVERS"] = " ".join(f"127.0.0.1:{p}" for p in ports.values())
    envs = {}
    for name, port in ports.items():
        envs[name] = dict(base, EPICS_PVA_SERVER_PORT=str(port))
    envs["client"] = dict(base, EPICS_PVA_SERVER_PORT=str(ports["ioc"]))
    return envs


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
        self.envs = demo_network()
        self.env = self.envs["client"]
        self.p = DEFAULT_PREFIX
        self.procs = Processes(self.envs, self.logs)
        self.ctx: Any = None  # made once every server answers (see start_services)
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)

    def get(self, suffix: str, timeout: float = 5.0) -> Any:
        return _value(self.ctx.get(self.p + suffix, timeout=timeout))

    def put(self, suffix: str, value: Any) -> None:
        self.ctx.put(self.p + suffix, value, timeout=10.0)

    def wait_pv(self, server: str, suffix: str, timeout: float = 60.0) -> None:
        """Wait for ``server`` to serve ``suffix``.

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
                    ctx.get(self.p + suffix, timeout=1.0)
                    return
                except Exception:  # noqa: BLE001 - not serving it yet
                    time.sleep(0.3)
        raise RuntimeError(f"{self.p}{suffix} did not answer within {timeout} s")

    def start_services(self) -> None:
        from p4p.client.thread import Context

        from ptychoflow.epicsenv import pva_conf

        self.procs.start("sim", [
            "sim", "--prefix", self.p, "--frames", str(self.s.frames), "--size", str(self.s.size),
            "--rate", str(self.s.rate), "--out", str(self.scans_dir), "--wait", "--serve"])
        self.wait_pv("sim", "cam1:Acquire", timeout=120)
        self.say(f"detector simulator up: {self.p}Pva1:Image, {self.s.frames} frames of "
                 f"{self.s.size}x{self.s.size} at {self.s.rate:g} Hz per scan")
        # the edge first: the IOC records its rates for the run reports from its start on
        models = self.work / "models"
        models.mkdir(parents=True, exist_ok=True)
        self.procs.start("edge", ["edge", "--prefix", self.p, "--input", self.p + "Pva1:Image",
                                  "--model-dir", str(models)]
                         + (["--int8"] if self.s.int8 else []))
        self.wait_pv("edge", "Edge:Processed_RBV", timeout=120)
        cfg = self.root / "ptychoflow.toml"
        cfg.write_text(
            f'[ioc]\nprefix = "{self.p}"\ndata_root = "{self.scans_dir}"\n'
            f'work_root = "{self.work}"\nedge_prefix = "{self.p}"\n'
            f'int8_models = {"true" if self.s.int8 else "false"}\n'
            + ('[compute.parsl]\nprovider = "local"\nworkers = 2\n'
               if self.s.compute == "Parsl" else ""))
        self.procs.start("ioc", ["--config", str(cfg), "ioc"])
        self.wait_pv("ioc", "Workflow:State_RBV", timeout=120)
        self.say(f"IOC up: {self.p}Workflow:* over CA and PVA")
        self.ctx = Context("pva", conf=pva_conf(self.env), useenv=False)
        end = time.monotonic() + 60
        while not str(self.get("Edge:Message_RBV")).startswith("connected"):
            if time.monotonic() > end:
                raise RuntimeError("the edge did not connect to the detector: "
                                   f"{self.get('Edge:Message_RBV')}")
            time.sleep(0.2)
        self.say(f"edge up: following {self.p}Pva1:Image, publishing {self.p}Edge:Phase and "
                 f"{self.p}Edge:Stitched")
        self.put("Recon:Epochs", self.s.recon_epochs)
        self.put("Train:Epochs", self.s.train_epochs)
        self.put("Compute:Backend", self.s.compute)
        self.put("Workflow:Auto", 1)
        self.say(f"Workflow:Auto = On: every complete scan file in {self.scans_dir} starts a run")

    def acquire(self, k: int) -> None:
        before = self.get("Edge:Processed_RBV")
        dropped_before = self.get("Edge:Dropped_RBV")
        version = self.get("Edge:Model:Version_RBV")
        self.put("cam1:Acquire", 1)
        self.say(f"scan {k}: cam1:Acquire = 1, the detector streams a new region of the sample")
        rates, latencies = [], []
        time.sleep(0.5)
        while self.get("cam1:Acquire"):  # what an operator's screen shows while the scan runs
            rate = float(self.get("Edge:FrameRate_RBV"))
            if rate > 0:
                rates.append(rate)
                latencies.append(float(self.get("Edge:Latency_RBV")))
            self.procs.check()
            time.sleep(0.5)
        time.sleep(1.5)  # the edge's status PVs update once a second
        done = self.get("Edge:Processed_RBV") - before
        dropped = self.get("Edge:Dropped_RBV") - dropped_before
        name = Path(str(self.get("HDF1:FullFileName_RBV"))).name
        if version == 0:
            self.say(f"scan {k}: saved as {name}; the edge has no model yet, so its {dropped} "
                     "frames are counted in Edge:Dropped_RBV")
            return
        speed = (f", {max(rates):.0f} frames/s, latency (frame in to phase out) "
                 f"{max(latencies):.1f} ms in its slowest second" if rates else "")
        self.say(f"scan {k}: saved as {name}; edge processed {done} frames with model "
                 f"v{version}, dropped {dropped}, bad {self.get('Edge:BadFrames_RBV')}{speed}")

    def follow_run(self, previous_run: int) -> dict[str, Any]:
        """Print the run's states and progress until it ends; return its summary."""
        end = time.monotonic() + self.s.timeout
        while self.get("Workflow:RunId_RBV") == previous_run:
            if time.monotonic() > end:
                raise RuntimeError("the IOC did not start a run for the new scan")
            self.procs.check()
            time.sleep(0.2)
        run_id = self.get("Workflow:RunId_RBV")
        last_state, last_pct = "", -10.0
        while True:
            self.procs.check()
            state = STATES[int(self.get("Workflow:State_RBV"))]
            pct = float(self.get("Workflow:Progress_RBV"))
            if state != last_state or pct >= last_pct + 25:
                extra = ""
                if state == "Reconstructing":
                    extra = (f" epoch {self.get('Recon:Epoch_RBV')}, error "
                             f"{self.get('Recon:Error_RBV'):.4g}")
                elif state == "Training":
                    extra = (f" epoch {self.get('Train:Epoch_RBV')}, val loss "
                             f"{self.get('Train:ValLoss_RBV'):.4g}")
                self.say(f"run {run_id}: {state} {pct:3.0f} %{extra}")
                last_state, last_pct = state, pct
            if state in ("Done", "Failed", "Aborted") and not self.get("Workflow:Busy_RBV"):
                break
            if time.monotonic() > end:
                raise RuntimeError(f"run {run_id} did not finish in {self.s.timeout} s")
            time.sleep(0.5)
        summary = {"run": run_id, "state": state, "message": self.get("Workflow:Message_RBV"),
                   "model_version": self.get("Model:Version_RBV"),
                   "best_val_loss": round(float(self.get("Train:BestValLoss_RBV")), 5),
                   "quality_ssim": round(float(self.get("Model:Quality_RBV")), 3)}
        self.say(f"run {run_id}: {summary['message']} (SSIM of the network against rPIE "
                 f"{summary['quality_ssim']}, best validation loss {summary['best_val_loss']})")
        # the IOC writes the run's report just after the run ends
        while (state == "Done" and f"run-{run_id:05d}" not in self.get("Workflow:Report_RBV")
               and time.monotonic() < end):
            time.sleep(0.2)
        summary["report"] = self.get("Workflow:Report_RBV")
        self.say(f"run {run_id}: report {summary['report'] or '(none)'}")
        if state != "Done":
            raise RuntimeError(f"run {run_id} ended {state}: {summary['message']}")
        return summary

    def wait_for_model(self, version: int, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while self.get("Edge:Model:Version_RBV") != version:
            if time.monotonic() > end:
                raise RuntimeError(f"the edge did not load model v{version}: "
                                   f"{self.get('Edge:Message_RBV')}")
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
        raw = self.ctx.get(self.p + "Edge:Stitched").raw
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
            previous = demo.get("Workflow:RunId_RBV")
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
        print(f"ptychoflow demo: stopped: {exc}", file=sys.stderr)
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
    import signal
    import threading

    p = demo.p
    demo.say("simulator, IOC and edge keep running; in another terminal:\n"
             f"  export {exports}\n"
             f"  ptychoflow gui --prefix {p}        # the PyDM screens (workflow and edge)\n"
             f"  ptychoflow status --prefix {p}     # the same in the terminal\n"
             f"  pvput {p}cam1:Acquire 1            # acquire another scan (Auto runs it)\n"
             "Ctrl-C stops the demo")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
