"""``ptychoflow bench ioc``: put-to-monitor latency with many CA and PVA clients.

An IOC runs in a subprocess on isolated loopback ports. Client processes hold
``--ca-clients`` caproto contexts and ``--pva-clients`` p4p contexts (each its
own connection, as separate operator screens would be), all monitoring
``Workflow:State_RBV``. The bench puts ``Workflow:Start`` and measures, at every
client, the time until the monitor shows ``Transferring``; each run then goes
through the (empty) benchmark stages to Done before the next put.
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

from ptychoflow.pvnames import CONTROL

HELP = (f"control IOC: {CONTROL.workflow_start.suffix} put → State_RBV monitor latency at 50 CA "
        "+ 50 PVA clients")
TRANSFERRING = 1
STAGE_S = 0.05


def bench_stage(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    """Benchmark-only stage: takes ``STAGE_S`` and does nothing else.

    Real stages take seconds to hours; a stage that returned at once would race the
    IOC through all four transitions while the first update is still fanning out,
    so the bench would measure a pile-up that never happens at a beamline.
    """
    time.sleep(STAGE_S)
    return {}


def bench_export(scan_path: str, workdir: str, params: dict[str, Any],
                 progress: Any = None) -> dict[str, Any]:
    """Benchmark-only export: a placeholder model file so the run ends Done."""
    model = Path(params["model_dir"]) / f"model-v{params['version']}.onnx"
    tmp = model.with_name(model.name + ".part")
    tmp.write_bytes(b"benchmark placeholder, not a model")
    os.replace(tmp, model)
    return {"model": str(model)}


def register(parser: argparse.ArgumentParser) -> None:
    """Bench options."""
    parser.add_argument("--ca-clients", type=int, default=50)
    parser.add_argument("--pva-clients", type=int, default=50)
    parser.add_argument("--puts", type=int, default=100, help="runs started (samples/client)")


# -- client processes ----------------------------------------------------------------------
def _client_main(kind: str, n: int, pv: str) -> None:
    """Subscribe ``n`` independent clients; print ready; on stdin EOF print the times."""
    # many callback threads contend for the GIL: hand it over sooner than every 5 ms, so the
    # figure is the IOC's latency and not this process's GIL queue
    sys.setswitchinterval(0.0002)
    times: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    first = threading.Semaphore(0)
    keep: list[Any] = []
    if kind == "ca":
        # pyepics on libca: one CA context (own TCP circuit) per client thread
        import epicscorelibs.path.pyepics  # noqa: F401
        from epics import ca

        def ca_client(i: int) -> None:
            ca.create_context()

            def cb(value: Any = None, timestamp: float = 0.0, **kw: Any) -> None:
                t = time.time()
                if int(value) == TRANSFERRING:
                    times[i].append((t, timestamp))
                first.release()

            chid = ca.create_channel(pv, connect=True)
            keep.append(ca.create_subscription(chid, use_time=True, callback=cb))
            keep.append(cb)
            done.wait()

        done = threading.Event()
        for i in range(n):
            threading.Thread(target=ca_client, args=(i,), daemon=True).start()
    else:
        from p4p.client.thread import Context

        from ptychoflow.epicsenv import pva_conf

        for i in range(n):
            ctx = Context("pva", conf=pva_conf(), useenv=False)

            def cbp(v: Any, i: int = i) -> None:
                t = time.time()
                if isinstance(v, Exception):
                    return
                if int(v.raw.value.index) == TRANSFERRING:
                    times[i].append((t, float(v.timestamp)))
                first.release()

            keep += [ctx, ctx.monitor(pv, cbp), cbp]
    for _ in range(n):
        if not first.acquire(timeout=60):
            raise SystemExit(f"{kind} clients did not all connect to {pv}")
    print("ready", flush=True)
    sys.stdin.read()
    time.sleep(0.2)
    print(json.dumps(times), flush=True)
    os._exit(0)  # skip slow teardown of many client contexts


# -- the bench -----------------------------------------------------------------------------
def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the IOC and clients, measure, stop everything; returns the figures."""
    from p4p.client.thread import Context

    from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
    from ptychoflow.scanfile import Scan, write_scan

    env = isolated_env()
    env["PYTHONUNBUFFERED"] = "1"
    prefix = random_prefix("PFB")
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="ptychoflow-bench-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        import numpy as np

        scan = write_scan(root / "data" / "bench.h5", Scan(
            data=np.zeros((2, 8, 8), np.uint16), positions=np.zeros((2, 2)), energy_ev=8800.0,
            distance_m=2.0, pixel_size_m=75e-6))
        stages = {s: "ptychoflow.ioc.bench:bench_stage" for s in ("reconstruct",
                                                                  "train")}
        stages["export"] = "ptychoflow.ioc.bench:bench_export"
        cfg = root / "bench.toml"
        cfg.write_text(f'[ioc]\ndata_root = "{root / "data"}"\nwork_root = "{root / "work"}"\n'
                       "[ioc.stages]\n" + "".join(f'{k} = "{v}"\n' for k, v in stages.items()))
        log = (root / "ioc.log").open("w")
        ioc = subprocess.Popen([sys.executable, "-m", "ptychoflow.cli", "--log-level", "WARNING",
                                "ioc", "--config", str(cfg), "--prefix", prefix], env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            state_pv = CONTROL.workflow_state.name(prefix)
            deadline = time.monotonic() + 60
            while True:  # a fresh client per try: one refused early would back off
                with Context("pva", conf=pva_conf(env), useenv=False) as probe:
                    try:
                        probe.get(state_pv, timeout=0.5)
                        break
                    except Exception:
                        if ioc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError("bench IOC did not start:\n" +
                                               (root / "ioc.log").read_text()) from None
                time.sleep(0.2)
            ctx = Context("pva", conf=pva_conf(env), useenv=False)
            for kind, n in (("ca", args.ca_clients), ("pva", args.pva_clients)):
                if n > 0:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "ptychoflow.ioc.bench", kind, str(n), state_pv],
                        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for p in procs:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a bench client failed to connect")
            ctx.put(CONTROL.scan_path.name(prefix), str(scan))
            put_times: list[float] = []
            for run in range(1, args.puts + 1):
                t0 = time.time()
                try:
                    ctx.put(CONTROL.workflow_start.name(prefix), 1)
                except Exception as exc:
                    msg = ctx.get(CONTROL.workflow_message.name(prefix)).raw.value
                    raise RuntimeError(f"{CONTROL.workflow_start.suffix} refused: {msg}") from exc
                put_times.append(t0)
                while int(ctx.get(CONTROL.workflow_run_id.name(prefix))) < run or \
                        int(ctx.get(CONTROL.workflow_busy.name(prefix)).raw.value.index) or \
                        int(ctx.get(state_pv).raw.value.index) < 5:
                    time.sleep(0.005)
                time.sleep(0.02)
            ctx.close()
            per_kind: dict[str, list[float]] = {"ca": [], "pva": []}
            ioc_side: list[float] = []
            for p, kind in zip(procs, [k for k, n in (("ca", args.ca_clients),
                                                       ("pva", args.pva_clients)) if n > 0],
                               strict=True):
                out, _ = p.communicate("", timeout=120)
                for client in json.loads(out.strip().splitlines()[-1]):
                    if len(client) != len(put_times):
                        raise RuntimeError(f"a {kind} client saw {len(client)} of "
                                           f"{len(put_times)} updates")
                    pairs = list(zip(client, put_times, strict=True))
                    per_kind[kind] += [1e3 * (t - t0) for (t, _), t0 in pairs]
                    # the record's own timestamp: when the IOC posted the new state
                    ioc_side += [1e3 * (ts - t0) for (_, ts), t0 in pairs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            if ioc.poll() is None:
                ioc.send_signal(2)
                try:
                    ioc.wait(20)
                except subprocess.TimeoutExpired:
                    ioc.kill()
                    ioc.wait()
            log.close()
    both = per_kind["ca"] + per_kind["pva"]
    result: dict[str, Any] = {
        "clients": args.ca_clients + args.pva_clients,
        "ca_clients": args.ca_clients, "pva_clients": args.pva_clients, "puts": args.puts,
        "latency_p50_ms": round(_percentile(both, 50), 2),
        "latency_p99_ms": round(_percentile(both, 99), 2),
        "latency_max_ms": round(max(both), 2),
    }
    for kind, xs in per_kind.items():
        if xs:
            result[f"{kind}_p50_ms"] = round(_percentile(xs, 50), 2)
            result[f"{kind}_p99_ms"] = round(_percentile(xs, 99), 2)
    result["ioc_post_p50_ms"] = round(_percentile(ioc_side, 50), 2)
    result["ioc_post_p99_ms"] = round(_percentile(ioc_side, 99), 2)
    result["cpus"] = os.cpu_count()
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    _client_main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
