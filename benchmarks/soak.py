"""Hours of load in minutes: the simulator into the edge, scan after scan, memory watched.

    .venv/bin/python benchmarks/soak.py --minutes 10 --rate 560             # the real network
    .venv/bin/python benchmarks/soak.py --minutes 10 --rate 2000 --do-nothing

Starts ``ptychoflow sim --serve --wait`` and ``ptychoflow edge`` (the 128x128 PtychoNN of
``ptychoflow bench edge``, or a do-nothing model), and a p4p client here that receives every
``Edge:Phase``. It acquires scans back to back for ``--minutes``, samples the resident memory
of every process (source, edge and its children, client) and the edge's status PVs every
``--sample-s`` seconds, and at the end accounts for every frame: sent (the simulator's
``cam1:ArrayCounter_RBV`` summed over scans) against processed + missed + dropped + bad.
Not in CI. Prints one JSON object as the last line of stdout:

* ``growth_pct``: resident memory of each process, mean of the last tenth of the run against
  the mean just after warm-up (the first tenth, at least 60 s), in per cent;
* ``sent``, ``received`` (this client's count), ``processed``, ``missed``, ``dropped``,
  ``bad``, ``accounted`` (whether processed + missed + dropped + bad == sent);
* ``status_live``: whether, between every two samples over which predictions kept arriving,
  ``Edge:Processed_RBV`` went up and ``Edge:FrameRate_RBV`` was above zero.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ptychoflow.edge.bench.baseline import PIXEL, build_model
from ptychoflow.edge.bench.models import do_nothing_model
from ptychoflow.edge.bench.pipeline import children
from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
from ptychoflow.pvnames import DETECTOR, EDGE


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class Counter:
    """Counts Edge:Phase updates received (a deep queue: every prediction, not the latest)."""

    def __init__(self, ctx: Any, pv: str) -> None:
        self.n = 0
        self.lock = threading.Lock()
        self.sub = ctx.monitor(pv, self._cb, request="record[queueSize=10000]")

    def _cb(self, v: Any) -> None:
        if isinstance(v, Exception) or int(v["uniqueId"]) == 0:
            return
        with self.lock:
            self.n += 1


def main() -> None:
    """Parse, start the source and the edge, acquire scans until time is up, report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=560.0, help="source rate, Hz")
    ap.add_argument("--frames", type=int, default=5000, help="frames per scan")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--do-nothing", action="store_true", help="1.0 * x + 0.0 instead of PtychoNN")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--samples-out", default="", help="write every memory sample here "
                    "(JSON lines), to see whether memory levels off")
    args = ap.parse_args()
    from p4p.client.thread import Context

    src_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{src_env['EPICS_PVA_SERVER_PORT']}"
    p = random_prefix("SOAK")
    py = [sys.executable, "-m", "ptychoflow.cli"]
    with tempfile.TemporaryDirectory(prefix="ptychoflow-soak-") as tmpname:
        tmp = Path(tmpname)
        if args.do_nothing:
            model = do_nothing_model(tmp / "models", args.size, PIXEL)
        else:
            model = build_model(tmp / "models", args.size)[0]
        logs = [tmp / "sim.log", tmp / "edge.log"]
        procs = [
            subprocess.Popen(py + ["sim", "--prefix", p, "--frames", str(args.frames), "--size",
                                   str(args.size), "--rate", str(args.rate), "--out", "",
                                   "--wait", "--serve", "--delay", "0"], env=src_env,
                             stdout=logs[0].open("wb"), stderr=subprocess.STDOUT),
            subprocess.Popen(py + ["edge", "--prefix", p, "--input",
                                   DETECTOR.pva1_image.name(p), "--model", str(model),
                                   "--input-queue", "256"], env=edge_env,
                             stdout=logs[1].open("wb"), stderr=subprocess.STDOUT),
        ]
        ctx = Context("pva", conf=pva_conf(edge_env), useenv=False, nt=False)
        try:
            out = _soak(ctx, p, procs, args)
        finally:
            ctx.close()
            for proc in procs:
                proc.send_signal(2)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print(json.dumps(out), flush=True)


def _get(ctx: Any, pv: str) -> Any:
    return ctx.get(pv, timeout=5.0)["value"]


def _soak(ctx: Any, p: str, procs: list[subprocess.Popen[bytes]],
          args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        try:
            if str(_get(ctx, EDGE.message.name(p))).startswith("connected to"):
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the edge did not connect to the simulator in 120 s")
        time.sleep(0.5)
    rx = Counter(ctx, EDGE.phase.name(p))
    time.sleep(1.0)
    pids = {"source": procs[0].pid, "edge": procs[1].pid}
    samples: list[dict[str, Any]] = []
    sent = scans = 0
    live = True
    t0 = time.monotonic()
    end = t0 + 60.0 * args.minutes
    last_processed = int(_get(ctx, EDGE.processed.name(p)))
    last_received = rx.n
    acquire = DETECTOR.cam1_acquire.name(p)
    while time.monotonic() < end:
        ctx.put(acquire, 1, timeout=5.0)
        scans += 1
        next_sample = time.monotonic()
        while True:
            running = int(_get(ctx, acquire)) == 1
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + args.sample_s
                mem = {k: rss_mb(v) for k, v in pids.items()}
                for kid, name in children(procs[1].pid).items():
                    mem[f"edge:{name}"] = mem.get(f"edge:{name}", 0.0) + rss_mb(kid)
                mem["client"] = rss_mb(os.getpid())
                processed = int(_get(ctx, EDGE.processed.name(p)))
                rate = float(_get(ctx, EDGE.frame_rate.name(p)))
                # predictions arrived since the last sample: the status PVs must show it
                if rx.n > last_received + 0.5 * args.rate * args.sample_s and (
                        processed == last_processed or rate <= 0):
                    live = False
                last_processed, last_received = processed, rx.n
                samples.append({"t": round(now - t0, 1), "rss_mb": mem})
            if not running:
                break
            time.sleep(0.2)
        sent += int(_get(ctx, DETECTOR.cam1_array_counter.name(p)))
    time.sleep(3.0)  # the last batches out, the status posted
    if args.samples_out:
        Path(args.samples_out).write_text("".join(json.dumps(x) + "\n" for x in samples))
    counts = {k: int(_get(ctx, spec.name(p))) for k, spec in (
        ("processed", EDGE.processed), ("missed", EDGE.missed), ("dropped", EDGE.dropped),
        ("bad", EDGE.bad_frames))}
    return {"minutes": args.minutes, "rate_hz": args.rate, "frames_per_scan": args.frames,
            "model": "do-nothing" if args.do_nothing else f"PtychoNN {args.size}x{args.size}",
            "scans": scans, "sent": sent, "received": rx.n, **counts,
            "accounted": sum(counts.values()) == sent, "status_live": live,
            "growth_pct": _growth(samples), "samples": len(samples),
            "rss_mb_end": samples[-1]["rss_mb"] if samples else {}}


def _growth(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Per process: mean RSS of the last tenth against the first tenth after warm-up (%)."""
    if len(samples) < 4:
        return {}
    t_end = samples[-1]["t"]
    warm = max(60.0, 0.1 * t_end)
    early = [s for s in samples if warm <= s["t"] < warm + max(60.0, 0.1 * t_end)]
    late = [s for s in samples if s["t"] >= 0.9 * t_end]
    out: dict[str, float] = {}
    for k in samples[-1]["rss_mb"]:
        a = [s["rss_mb"].get(k, 0.0) for s in early]
        b = [s["rss_mb"].get(k, 0.0) for s in late]
        if a and b and sum(a) > 0:
            out[k] = round(100.0 * (sum(b) / len(b) - sum(a) / len(a)) / (sum(a) / len(a)), 2)
    return out


if __name__ == "__main__":
    main()
