"""The peer pass of ``ptychoflow bench edge``: the same model run by ``pvapy-hpc-consumer``.

A beamline user's alternative to ``ptychoflow edge`` is pvapy's streaming
framework (the one edgePtychoNN is built on) with a processor of their own:
:mod:`ptychoflow.edge.bench.peer_processor`, ONNX Runtime in batches of 8.
:func:`peer_pass` runs it against the same source as the pipeline pass
(``ptychoflow sim``, the same frames, rate and clock, the same scheduling
policy) and measures it the same way: a p4p client counts the consumer's
output images, two acquisitions, the better steady rate kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ptychoflow.edge.bench.codecs import sim_codec_args
from ptychoflow.edge.bench.pipeline import (
    Receiver,
    cpu_s,
    steady_rate,
    stop_processes,
    thread_cpu_s,
    wait_until,
)
from ptychoflow.edge.threads import POLICIES, current_policy, level_realtime_threads, set_policy
from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
from ptychoflow.pvnames import DETECTOR

PROCESSOR = Path(__file__).with_name("peer_processor.py")
PROCESSOR_CLASS = "PeerOnnxProcessor"
GOAL = 1.2  # pipeline_fps / peer_fps on this machine


def consumer_exe() -> str:
    """``pvapy-hpc-consumer`` of this interpreter's environment (it imports ptychoflow)."""
    here = Path(sys.executable).parent / "pvapy-hpc-consumer"
    found = str(here) if here.exists() else shutil.which("pvapy-hpc-consumer")
    if not found:
        raise RuntimeError("pvapy-hpc-consumer not found; install pvapy (pip install pvapy) "
                           "in this environment to run the peer comparison")
    return found


def consumer_command(prefix: str, model: Path, threads: int, batch: int,
                     server_queue: int) -> list[str]:
    """The consumer's command line: input, output, status and control under ``prefix``.

    ``--receiver-queue-size 0`` (unbounded) takes every update off the wire at
    once and processes it on the consumer's main thread; the server queue
    holds updates while the client reads the previous ones.
    """
    return [consumer_exe(), "--input-channel", DETECTOR.pva1_image.name(prefix),
            "--output-channel", f"{prefix}Peer:Phase",
            "--status-channel", f"{prefix}Peer:Status",
            "--control-channel", f"{prefix}Peer:Control",
            "--processor-file", str(PROCESSOR), "--processor-class", PROCESSOR_CLASS,
            "--processor-args", json.dumps({"model": str(model), "threads": threads,
                                            "batch": batch}),
            "--server-queue-size", str(server_queue), "--receiver-queue-size", "0",
            "--log-level", "warning", "--disable-curses"]


def _command(ctx: Any, prefix: str, command: str, reply: str) -> None:
    """Run a command on the consumer's control channel; return once pvapy has done it.

    pvapy runs it on a timer (0.1 s) and then sets the control record's
    ``statusMessage`` to ``reply``.
    """
    pv = f"{prefix}Peer:Control"
    ctx.put(pv, {"command": command}, timeout=5.0)
    wait_until(lambda: str(ctx.get(pv, timeout=2.0)["statusMessage"]) == reply, 10,
          f"pvapy-hpc-consumer's {command}", [])


def _status(ctx: Any, prefix: str) -> dict[str, Any]:
    """The consumer's statistics, refreshed through its control channel."""
    _command(ctx, prefix, "get_stats", "Stats update successful")
    v = ctx.get(f"{prefix}Peer:Status", timeout=5.0)
    return {k: v[k].todict() for k in ("receiverStats", "queueStats", "processorStats",
                                       "userStats")}


def peer_pass(model: Path, args: argparse.Namespace, tmp: Path, rate: float, *,
              batch: int = 8) -> dict[str, Any]:
    """Source -> pvapy-hpc-consumer (ONNX, batch ``batch``) -> client; two passes at ``rate``.

    Uses ``args.frames``, ``args.size``, ``args.source_tick_ms``,
    ``args.threads`` and ``args.scheduling`` as the pipeline pass does; ``rate``
    is the pipeline's throughput-pass source rate (Hz).
    """
    from p4p.client.thread import Context

    src_env, peer_env = isolated_env(), isolated_env()
    peer_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{src_env['EPICS_PVA_SERVER_PORT']}"
    p = random_prefix("PEER")
    n = args.frames
    logs = [tmp / "peer-sim.log", tmp / "peer-consumer.log"]
    py = [sys.executable, "-m", "ptychoflow.cli"]

    def policy() -> None:  # in each child before it starts, as the pipeline pass does
        set_policy(args.scheduling)

    procs: list[subprocess.Popen[bytes]] = []

    def listening(env: dict[str, str]) -> bool:
        _alive(procs, logs)
        return _listening(int(env["EPICS_PVA_SERVER_PORT"]))

    # each client starts once the servers it looks up listen: a name server that refused
    # a connection is tried again only 10 s later
    try:
        procs.append(subprocess.Popen(
            py + ["sim", "--prefix", p, "--frames", str(n), "--size", str(args.size),
                  "--rate", "100", "--tick-ms", str(args.source_tick_ms), "--out", "",
                  "--wait", "--serve", "--delay", "0", "--scatter", "1"]
            + sim_codec_args(getattr(args, "codec", "none")),
            env=src_env, preexec_fn=policy, stdout=logs[0].open("wb"),
            stderr=subprocess.STDOUT))
        wait_until(lambda: listening(src_env), 120, "the source listening", logs)
        procs.append(subprocess.Popen(
            consumer_command(p, model, args.threads, batch, max(n, 1024)), env=peer_env,
            preexec_fn=policy, stdin=subprocess.DEVNULL, stdout=logs[1].open("wb"),
            stderr=subprocess.STDOUT))
        wait_until(lambda: listening(peer_env), 120, "pvapy-hpc-consumer listening", logs)
    except BaseException:
        stop_processes(procs)
        raise
    # this client finds the source through its name server and the consumer by UDP
    # search only: through a name server that is a pvAccessCPP server (pvapy's), a p4p
    # (pvxs) client's channels do not connect, or hang once its connection is made
    conf = pva_conf(peer_env)
    conf["EPICS_PVA_NAME_SERVERS"] = f"127.0.0.1:{src_env['EPICS_PVA_SERVER_PORT']}"
    saved = current_policy()
    set_policy(args.scheduling)
    ctx = Context("pva", conf=conf, useenv=False, nt=False)
    if saved in POLICIES:
        set_policy(saved)
    try:
        def ready() -> bool:
            _alive(procs, logs)
            try:  # the output channel exists once the consumer got the source's first update
                ctx.get(p + "Peer:Phase", timeout=1.0)
                ctx.get(DETECTOR.cam1_acquire.name(p), timeout=1.0)
            except Exception:
                return False
            return True

        wait_until(ready, 120, "pvapy-hpc-consumer connected to the simulator", logs)
        for pid in (procs[0].pid, procs[1].pid, None):
            level_realtime_threads(args.scheduling, pid)
        rx = Receiver(ctx, p + "Peer:Phase")
        time.sleep(0.5)
        rx.take()
        pids = {"source": procs[0].pid, "consumer": procs[1].pid, "client": None}

        def one_pass() -> dict[str, Any]:
            """One acquisition; ends when all n arrived, or 5 s after the last one came."""
            _command(ctx, p, "reset_stats", "Stats reset successful")
            ctx.put(DETECTOR.cam1_acquire_rate.name(p), float(rate), timeout=5.0)
            ctx.put(DETECTOR.cam1_acquire.name(p), 1, timeout=5.0)
            rows: list[tuple[float, int, float]] = []
            cpu0: dict[str, float] = {}
            threads0: dict[str, float] = {}
            first = 0
            last = time.monotonic()
            deadline = last + 120.0 + 20.0 * n / max(1.0, rate)
            while len(rows) < n and time.monotonic() < deadline:
                _alive(procs, logs)
                new = rx.take()
                if new:
                    if not rows:  # CPU from the first result on, as the pipeline pass
                        cpu0 = {k: cpu_s(v) for k, v in pids.items()}
                        threads0 = thread_cpu_s(procs[1].pid)
                        first = len(new)
                    rows.extend(new)
                    last = time.monotonic()
                elif rows and time.monotonic() - last > 5.0:
                    break
                time.sleep(0.05)
            frames = max(1, len(rows) - first)
            cpu_ms = {k: round(1000.0 * (cpu_s(v) - cpu0.get(k, 0.0)) / frames, 3)
                      for k, v in pids.items()}
            spent = {k: v - threads0.get(k, 0.0)
                     for k, v in thread_cpu_s(procs[1].pid).items()}
            threads_us = {k: round(1e6 * v / frames, 1)
                          for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}
            acquire = DETECTOR.cam1_acquire.name(p)
            wait_until(lambda: int(ctx.get(acquire, timeout=2.0)["value"]) == 0, 60,
                  "end of the acquisition", logs)
            return {"fps": steady_rate([r[0] for r in rows]) if rows else 0.0,
                    "ids": sorted(r[1] for r in rows), "cpu_ms": cpu_ms,
                    "threads_us": threads_us, "stats": _status(ctx, p)}

        passes = [one_pass() for _ in range(2)]
        best = max(passes, key=lambda ps: ps["fps"])
        user = best["stats"]["userStats"]
        return {
            "peer_fps": round(float(best["fps"]), 1),
            "peer_fps_runs": [round(float(ps["fps"]), 1) for ps in passes],
            "peer_frames": len(best["ids"]),
            "peer_complete": all(ps["ids"] == list(range(1, n + 1)) for ps in passes),
            "peer_missing": sum(n - len(set(ps["ids"])) for ps in passes),
            "peer_batch": batch, "peer_rate_hz": round(float(rate), 1),
            "peer_cpu_ms_per_frame": best["cpu_ms"],
            "peer_threads_us_per_frame": best["threads_us"],
            # the processor's own clocks (wall time per frame on its threads)
            "peer_processor_us_per_frame": {
                k: round(float(user[f"{k}UsPerFrame"]), 1)
                for k in ("decode", "preprocess", "infer", "publish")},
            "peer_processed": int(user["nFramesProcessed"]),
            "peer_flushes": int(user["nFlushes"]),
            "peer_overruns": int(best["stats"]["receiverStats"].get("nOverruns", 0)),
        }
    finally:
        ctx.close()
        stop_processes(procs)


def compare(pipeline_fps: float, peer_fps: float) -> dict[str, Any]:
    """The figures ``bench edge`` reports beside ``peer_fps``."""
    ratio = pipeline_fps / peer_fps if peer_fps > 0 else float("inf")
    return {"pipeline_vs_peer": round(ratio, 3), "goal_vs_peer": ratio >= GOAL}


def _alive(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Raise, with the ends of their logs, if the source or the consumer has ended."""
    if any(proc.poll() is not None for proc in procs):
        tails = "\n".join(lg.read_text(errors="replace")[-2000:] for lg in logs if lg.exists())
        raise RuntimeError(f"peer: the source or pvapy-hpc-consumer ended early\n{tails}")


def _listening(port: int) -> bool:
    """A TCP server accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
