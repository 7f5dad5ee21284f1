"""The control IOC under 100 monitoring clients through whole runs: are puts still prompt?

``ptychoflow bench ioc`` measures ``Workflow:Start`` → ``State_RBV`` with 100
clients and empty stages. At a beamline the clients (operator screens, Bluesky,
archivers) watch a run's whole progress: the state, the progress bar, the solver's
epoch and error, the training loss, the messages, all updating while the run
goes. This study runs whole runs whose stages report progress at a real solver's
pace (an epoch every ``--epoch-s``), with ``--ca-clients`` pyepics clients and
``--pva-clients`` p4p clients (each its own connection) monitoring all of those
PVs, and meanwhile puts a setting (``Recon:Epochs``, autosaved: a file written
per put) every ``--put-every-s``. It reports the put → monitor latency at every
client (the goal of ``bench ioc``: p99 < 20 ms), the put's own round trip, and
how many progress updates the clients saw (all live).

The stages report progress but do not compute: at a beamline the compute runs
at a remote site, not on the IOC's host. Not in CI; its figures go to
docs/reliability.md::

    .venv/bin/python benchmarks/ioc_run_load.py --runs 3
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

HERE = Path(__file__).resolve().parent
SETTING = CONTROL.recon_epochs
WATCHED_ALL = (CONTROL.workflow_state, CONTROL.workflow_progress, CONTROL.workflow_message,
           CONTROL.recon_epoch, CONTROL.recon_error, CONTROL.train_epoch, CONTROL.train_loss,
           CONTROL.train_val_loss, CONTROL.transfer_rate, SETTING)
# --only-setting: the clients watch the setting alone (the run's progress still fans out
# to none of them): tells the cost of the clients' own traffic from the run's
WATCHED = (SETTING,) if os.environ.get("IOC_RUN_LOAD_ONLY_SETTING") else WATCHED_ALL
EPOCH_S = float(os.environ.get("IOC_RUN_LOAD_EPOCH_S", "0.1"))
EPOCHS = int(os.environ.get("IOC_RUN_LOAD_EPOCHS", "100"))


# -- stages the IOC loads by name (this folder is on its PYTHONPATH) ----------------------
def reconstruct(scan_path: str, workdir: str, params: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    """A solver's progress at its pace: epoch and error every EPOCH_S."""
    for epoch in range(1, EPOCHS + 1):
        time.sleep(EPOCH_S)
        if progress:
            progress(epoch / EPOCHS, f"epoch {epoch}", epoch=epoch, error=1.0 / epoch)
    return {"reconstruction": "none"}


def train(scan_path: str, workdir: str, params: dict[str, Any],
          progress: Any = None) -> dict[str, Any]:
    """Training's progress at its pace: epoch, loss, validation loss every EPOCH_S."""
    for epoch in range(1, EPOCHS + 1):
        time.sleep(EPOCH_S)
        if progress:
            progress(epoch / EPOCHS, f"epoch {epoch}", epoch=epoch, loss=1.0 / epoch,
                     val_loss=1.5 / epoch, best_val_loss=1.5 / epoch)
    return {"best_val_loss": 1.5 / EPOCHS}


def export(scan_path: str, workdir: str, params: dict[str, Any],
           progress: Any = None) -> dict[str, Any]:
    """A placeholder model file, so the run ends Done."""
    model = Path(params["model_dir"]) / f"model-v{params['version']}.onnx"
    model.write_bytes(b"benchmark placeholder, not a model")
    return {"model": str(model)}


# -- client processes ----------------------------------------------------------------------
def client_main(kind: str, n: int, prefix: str) -> None:
    """``n`` clients each monitoring WATCHED; on stdin EOF print, per client, the arrival
    times of SETTING's updates (value, time) and how many updates each PV brought.
    """
    sys.setswitchinterval(0.0002)
    seen: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    counts: list[dict[str, int]] = [{s.suffix: 0 for s in WATCHED} for _ in range(n)]
    first = threading.Semaphore(0)
    keep: list[Any] = []

    def note(i: int, suffix: str, value: Any) -> None:
        counts[i][suffix] += 1
        if suffix == SETTING.suffix:
            seen[i].append((float(value), time.time()))
            if counts[i][suffix] == 1:
                first.release()

    if kind == "ca":
        import epicscorelibs.path.pyepics  # noqa: F401
        from epics import ca

        done = threading.Event()

        def ca_client(i: int) -> None:
            ca.create_context()
            for spec in WATCHED:
                def cb(value: Any = None, spec: Any = spec, **kw: Any) -> None:
                    note(i, spec.suffix, value if spec is SETTING else 0)
                chid = ca.create_channel(spec.name(prefix), connect=True)
                keep.extend([ca.create_subscription(chid, callback=cb), cb])
            done.wait()

        for i in range(n):
            threading.Thread(target=ca_client, args=(i,), daemon=True).start()
    else:
        from p4p.client.thread import Context

        from ptychoflow.epicsenv import pva_conf

        for i in range(n):
            ctx = Context("pva", conf=pva_conf(), useenv=False)
            keep.append(ctx)
            for spec in WATCHED:
                def cbp(v: Any, i: int = i, spec: Any = spec) -> None:
                    if not isinstance(v, Exception):
                        note(i, spec.suffix, v.raw.value if spec is SETTING else 0)
                keep += [ctx.monitor(spec.name(prefix), cbp), cbp]
    for _ in range(n):
        if not first.acquire(timeout=120):
            raise SystemExit(f"{kind} clients did not all connect")
    print("ready", flush=True)
    sys.stdin.read()
    time.sleep(0.3)
    print(json.dumps({"seen": seen, "counts": counts}), flush=True)
    os._exit(0)


# -- the study -----------------------------------------------------------------------------
def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ca-clients", type=int, default=50)
    ap.add_argument("--pva-clients", type=int, default=50)
    ap.add_argument("--put-every-s", type=float, default=0.1)
    ap.add_argument("--pin", action="store_true",
                    help="the IOC on CPU 0, the clients and this process on the others (as "
                         "clients on other hosts would leave the IOC's CPU alone)")
    ap.add_argument("--only-setting", action="store_true",
                    help="clients watch only the setting put (not the run's progress)")
    args = ap.parse_args()

    import numpy as np
    from p4p.client.thread import Context

    from ptychoflow.edge.bench.pipeline import cpu_s
    from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
    from ptychoflow.scanfile import Scan, write_scan

    env = isolated_env()
    env["PYTHONUNBUFFERED"] = "1"
    if args.only_setting:
        env["IOC_RUN_LOAD_ONLY_SETTING"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    prefix = random_prefix("PFL")
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="ptychoflow-ioc-load-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        scan = write_scan(root / "data" / "scan.h5", Scan(  # 64 MB: the transfer's rate updates
            data=np.zeros((2048, 128, 128), np.uint16), positions=np.zeros((2048, 2)),
            energy_ev=8800.0, distance_m=2.0, pixel_size_m=75e-6))
        cfg = root / "ioc.toml"
        cfg.write_text(f'[ioc]\ndata_root = "{root / "data"}"\nwork_root = "{root / "work"}"\n'
                       "[ioc.stages]\n" + "".join(f'{s} = "ioc_run_load:{s}"\n'
                                                  for s in ("reconstruct", "train", "export")))
        log = (root / "ioc.log").open("w")
        others = set(range(1, os.cpu_count() or 2)) or {0}
        if args.pin:
            os.sched_setaffinity(0, others)
        ioc = subprocess.Popen([*(["taskset", "-c", "0"] if args.pin else []),
                                sys.executable, "-m", "ptychoflow.cli", "--log-level", "WARNING",
                                "ioc", "--config", str(cfg), "--prefix", prefix], env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        ctx = Context("pva", conf=pva_conf(env), useenv=False)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    ctx.get(SETTING.name(prefix), timeout=0.5)
                    break
                except Exception:
                    if ioc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((root / "ioc.log").read_text()) from None
                    time.sleep(0.2)
            for kind, n in (("ca", args.ca_clients), ("pva", args.pva_clients)):
                if n:
                    procs.append(subprocess.Popen(
                        [sys.executable, __file__, "--client", kind, str(n), prefix], env=env,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for p in procs:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("clients did not connect")
            ctx.put(CONTROL.scan_path.name(prefix), str(scan))
            puts: dict[float, float] = {}  # value -> put start time
            round_trips: list[float] = []
            t_start = time.monotonic()
            cpu0 = {"ioc": cpu_s(ioc.pid), "clients": sum(cpu_s(p.pid) for p in procs),
                    "this": cpu_s()}
            value = 1000.0
            for _ in range(args.runs):
                ctx.put(CONTROL.workflow_start.name(prefix), 1)
                time.sleep(0.5)
                while int(ctx.get(CONTROL.workflow_busy.name(prefix)).raw.value.index):
                    value += 1
                    t0 = time.time()
                    ctx.put(SETTING.name(prefix), value)  # waits for the IOC's answer
                    round_trips.append(1e3 * (time.time() - t0))
                    puts[value] = t0
                    time.sleep(args.put_every_s)
            wall = time.monotonic() - t_start
            cpu = {"ioc": cpu_s(ioc.pid), "clients": sum(cpu_s(p.pid) for p in procs),
                   "this": cpu_s()}
            cores = {k: round((cpu[k] - cpu0[k]) / wall, 2) for k in cpu}
            states = [r for r in ctx.get(CONTROL.workflow_message.name(prefix)).raw.value.split()]
            latencies: dict[str, list[float]] = {"ca": [], "pva": []}
            counts: dict[str, dict[str, int]] = {}
            for p, kind in zip(procs, [k for k, n in (("ca", args.ca_clients),
                                                       ("pva", args.pva_clients)) if n],
                               strict=True):
                out, _ = p.communicate("", timeout=120)
                got = json.loads(out.strip().splitlines()[-1])
                missing = 0
                for client in got["seen"]:
                    arrived = {v: t for v, t in client}
                    for v, t0 in puts.items():
                        if v in arrived:
                            latencies[kind].append(1e3 * (arrived[v] - t0))
                        else:
                            missing += 1
                per_pv = {s: min(c[s] for c in got["counts"]) for s in got["counts"][0]}
                counts[kind] = {**per_pv, "setting_updates_missed": missing}
        finally:
            ctx.close()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            ioc.send_signal(2)
            try:
                ioc.wait(30)
            except subprocess.TimeoutExpired:
                ioc.kill()
            log.close()
    both = latencies["ca"] + latencies["pva"]
    print(json.dumps({
        "runs": args.runs, "only_setting": args.only_setting, "pinned": args.pin,
        "wall_s": round(wall, 1), "puts": len(puts),
        "clients": args.ca_clients + args.pva_clients, "watched_pvs": len(WATCHED),
        "put_to_monitor_p50_ms": round(_pct(both, 50), 2),
        "put_to_monitor_p99_ms": round(_pct(both, 99), 2),
        "put_to_monitor_max_ms": round(max(both), 2) if both else None,
        "ca_p99_ms": round(_pct(latencies["ca"], 99), 2),
        "pva_p99_ms": round(_pct(latencies["pva"], 99), 2),
        "put_round_trip_p50_ms": round(_pct(round_trips, 50), 2),
        "put_round_trip_p99_ms": round(_pct(round_trips, 99), 2),
        "cores_used": cores, "least_updates_per_client": counts,
        "last_message": " ".join(states)[:120],
        "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
    }, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
