"""The pipeline pass of ``ptychoflow bench edge``: source -> edge -> client, timed.

``ptychoflow sim`` streams, ``ptychoflow edge`` (a subprocess) serves the model,
and a p4p client here receives ``Edge:Phase``; :func:`pipeline` returns the
steady rate, latency, frames accounted for, and CPU per frame of each process
and of each edge thread (see :mod:`ptychoflow.edge.bench.edge` for what each figure
means). ``benchmarks/edge_io_ceiling.py`` runs it with a do-nothing model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.edge.bench.codecs import sim_codec_args
from ptychoflow.edge.threads import (
    POLICIES,
    current_policy,
    level_realtime_threads,
    set_policy,
)
from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
from ptychoflow.pvnames import DETECTOR, EDGE


class Receiver:
    """Counts Edge:Phase updates: receipt time, uniqueId and source time stamp."""

    def __init__(self, ctx: Any, pv: str) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[float, int, float]] = []
        self.sub = ctx.monitor(pv, self._cb, request="record[queueSize=10000]")

    def _cb(self, v: Any) -> None:
        now = time.time()
        uid = int(v["uniqueId"])
        if uid == 0:
            return
        ts = v["dataTimeStamp.secondsPastEpoch"] + v["dataTimeStamp.nanoseconds"] * 1e-9
        with self.lock:
            self.rows.append((now, uid, ts))

    def take(self) -> list[tuple[float, int, float]]:
        with self.lock:
            rows, self.rows = self.rows, []
        return rows


def _stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds in a ``/proc/.../stat`` file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds of a process (all its threads) so far; None: this one."""
    return _stat_cpu_s(Path(f"/proc/{pid or 'self'}/stat"))


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of process ``pid`` so far, summed by thread name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            spent = _stat_cpu_s(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + spent
    return out


def children(pid: int) -> dict[int, str]:
    """Child processes of ``pid``: process id -> name (a lane's or the map's process)."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            try:
                out[int(k)] = Path(f"/proc/{k}/comm").read_text().strip()
            except OSError:
                continue
    return out


def _group(name: str) -> str:
    """The figure a child process's CPU goes to: "lanes" for lane processes, else its name."""
    return "lanes" if name.startswith("edge-lane") else name


def _children_cpu_s(pid: int) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds so far of the edge's child processes: by group, and by "group/thread"."""
    procs: dict[str, float] = {}
    threads: dict[str, float] = {}
    for kid, name in children(pid).items():
        group = _group(name)
        try:
            total, by_thread = cpu_s(kid), thread_cpu_s(kid)
        except OSError:  # the child ended meanwhile
            continue
        procs[group] = procs.get(group, 0.0) + total
        for t, v in by_thread.items():
            threads[f"{group}/{t}"] = threads.get(f"{group}/{t}", 0.0) + v
    return procs, threads


def steady_rate(times: list[float]) -> float:
    """Frames per second between the 10th and the 90th percentile frame of a pass.

    Results arrive a micro-batch at a time; first-to-last would leave the first
    batch's processing out of the interval but its frames in the count (a
    few % too fast). Between two inner frames start-up and tail cancel out.
    """
    t = np.sort(np.asarray(times))
    if len(t) < 10:
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0
    i, j = len(t) // 10, len(t) - 1 - len(t) // 10
    return (j - i) / (t[j] - t[i])


def wait_until(pred: Any, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    tails = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs if p.exists())
    raise RuntimeError(f"benchmark: {what} did not happen in {timeout:.0f} s\n{tails}")


def pipeline(path: Path, args: argparse.Namespace, engine_rate: float, tmp: Path
             ) -> dict[str, Any]:
    """Source -> edge -> client, two passes: throughput, then latency at part load."""
    from p4p.client.thread import Context

    src_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{src_env['EPICS_PVA_SERVER_PORT']}"
    p = random_prefix("BENCH")
    py = [sys.executable, "-m", "ptychoflow.cli"]
    logs = [tmp / "sim.log", tmp / "edge.log"]
    n = args.frames
    lanes = max(1, getattr(args, "lanes", 1))
    inputs = " ".join(DETECTOR.image(k + 1).name(p) for k in range(lanes))

    def policy() -> None:  # runs in the source's child process before it starts
        set_policy(args.scheduling)

    procs = [
        subprocess.Popen(py + ["sim", "--prefix", p, "--frames", str(n), "--size",
                               str(args.size), "--rate", "100", "--tick-ms",
                               str(args.source_tick_ms), "--out", "", "--wait", "--serve",
                               "--delay", "0", "--scatter", str(lanes)]
                         + sim_codec_args(getattr(args, "codec", "none")), env=src_env,
                         preexec_fn=policy,
                         stdout=logs[0].open("wb"), stderr=subprocess.STDOUT),
        subprocess.Popen(py + ["edge", "--prefix", p, "--input", inputs, "--model",
                               str(path), "--batch-size", str(args.batch_size), "--threads",
                               str(args.threads), "--engine", args.engine, "--device",
                               args.device, "--workers", str(args.workers), "--streams",
                               str(args.streams), "--scheduling", args.scheduling,
                               "--queue-size", str(max(4 * n, 1024)),
                               "--input-queue", str(args.input_queue)]
                         + (["--no-stitch"] if args.no_stitch else [])
                         + (["--stitch-process"] if args.stitch_process else []), env=edge_env,
                         stdout=logs[1].open("wb"), stderr=subprocess.STDOUT),
    ]
    # the client's threads (started by the Context) run under the same policy
    saved = current_policy()
    set_policy(args.scheduling)
    ctx = Context("pva", conf=pva_conf(edge_env), useenv=False, nt=False)
    if saved in POLICIES:
        set_policy(saved)
    try:
        def ready() -> bool:
            try:
                msg = str(ctx.get(EDGE.message.name(p), timeout=1.0)["value"])
                ctx.get(DETECTOR.cam1_acquire.name(p), timeout=1.0)
            except Exception:
                return False
            # with lanes, each says so as it connects; the edge once all have
            return msg.startswith("connected to all" if lanes > 1 else "connected to")

        wait_until(ready, 120, "edge connected to the simulator", logs)
        # EPICS gives its network threads real-time priority where it may; the edge
        # levels its own under --scheduling batch, the source and this client alike
        for pid in (procs[0].pid, None):
            level_realtime_threads(args.scheduling, pid)
        rx = Receiver(ctx, EDGE.phase.name(p))
        time.sleep(0.5)
        rx.take()

        pids = {"source": procs[0].pid, "edge": procs[1].pid, "client": None}

        def one_pass(rate: float) -> tuple[list[tuple[float, int, float]], dict[str, float],
                                           dict[str, float]]:
            """One acquisition; ends when all n arrived or nothing came for 5 s after it.

            Also returns each process's CPU per frame from the first prediction to the
            last (the source prepares a new scan before streaming; that is left out),
            and the edge's by thread name.
            """
            ctx.put(DETECTOR.cam1_acquire_rate.name(p), float(rate), timeout=5.0)
            ctx.put(DETECTOR.cam1_acquire.name(p), 1, timeout=5.0)
            rows: list[tuple[float, int, float]] = []
            last = [time.monotonic()]
            cpu0: dict[str, float] = {}
            threads0: dict[str, float] = {}
            kids0: dict[str, float] = {}
            at_first = [0]

            def done() -> bool:
                new = rx.take()
                if new:
                    if not rows:
                        cpu0.update({k: cpu_s(v) for k, v in pids.items()})
                        kids, kid_threads = _children_cpu_s(procs[1].pid)
                        threads0.update(thread_cpu_s(procs[1].pid))
                        threads0.update(kid_threads)
                        kids0.update(kids)
                        at_first[0] = len(new)
                    rows.extend(new)
                    last[0] = time.monotonic()
                # the source simulates the scan before it streams: the 5 s of silence that
                # end a pass count from the first prediction, not from the start
                return len(rows) >= n or (bool(rows) and time.monotonic() - last[0] > 5.0)
            wait_until(done, 60 + 5 * n / max(1.0, min(rate, engine_rate)), f"{n} predictions",
                  logs)
            frames = max(1, len(rows) - at_first[0])
            cpu_ms = {k: round(1000.0 * (cpu_s(v) - cpu0.get(k, 0.0)) / frames, 3)
                      for k, v in pids.items()}
            # the edge's child processes (lanes, the map's process) on their own lines
            kids, kid_threads = _children_cpu_s(procs[1].pid)
            for k, v in kids.items():
                if v - kids0.get(k, 0.0) > 0:  # not multiprocessing's idle resource tracker
                    cpu_ms[f"edge:{k}"] = round(1000.0 * (v - kids0.get(k, 0.0)) / frames, 3)
            now_threads = thread_cpu_s(procs[1].pid)
            now_threads.update(kid_threads)
            spent = {k: v - threads0.get(k, 0.0) for k, v in now_threads.items()}
            threads_us = {k: round(1e6 * v / frames, 1)
                          for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}
            acquire = DETECTOR.cam1_acquire.name(p)
            wait_until(lambda: int(ctx.get(acquire, timeout=2.0)["value"]) == 0, 30,
                  "end of the acquisition", logs)
            return rows, cpu_ms, threads_us

        # two throughput passes, the better one kept, as the engine is timed twice
        passes = []
        for _ in range(2):
            rows, cpu_ms, threads_us = one_pass(args.rate or args.rate_factor * engine_rate)
            passes.append((steady_rate([r[0] for r in rows]), rows, cpu_ms, threads_us))
        complete = all(sorted(r[1] for r in rows) == list(range(1, n + 1))
                       for _, rows, _, _ in passes)
        fps, rows, cpu_ms, threads_us = max(passes, key=lambda ps: ps[0])
        lat_rows, _, _ = one_pass(args.latency_load * fps)
        lat = np.array([(r[0] - r[2]) * 1000.0 for r in lat_rows])
        time.sleep(1.0)
        dropped = int(ctx.get(EDGE.dropped.name(p), timeout=5.0)["value"])
        bad = int(ctx.get(EDGE.bad_frames.name(p), timeout=5.0)["value"])
        return {"pipeline_fps": round(float(fps), 1),
                "pipeline_fps_runs": [round(float(ps[0]), 1) for ps in passes],
                "latency_p99_ms": round(float(np.percentile(lat, 99)), 2),
                "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
                "latency_rate_hz": round(float(args.latency_load * fps), 1),
                "pipeline_frames": len(rows), "latency_frames": len(lat_rows),
                "complete": complete,
                # frames of the three passes that never reached the client; with a client
                # that keeps up, each is one the edge counted (dropped or bad)
                "missing": sum(n - len({r[1] for r in rs})
                               for rs in [ps[1] for ps in passes] + [lat_rows]),
                "dropped": dropped, "bad_frames": bad, "cpu_ms_per_frame": cpu_ms,
                "edge_threads_us_per_frame": threads_us}
    finally:
        ctx.close()
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT each process a pass started, last first (they finish cleanly), then wait;
    kill any that has not ended in 20 s.
    """
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(2)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
