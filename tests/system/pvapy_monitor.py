"""Run as a subprocess: monitor an NTNDArray PV with pvapy and dump what arrived as JSON.

pvapy reads the EPICS_PVA_* variables of its own process, so it runs apart from
the test process (whose p4p clients are configured explicitly).
Usage: python pvapy_monitor.py PV COUNT TIMEOUT OUT.json
"""

from __future__ import annotations

import json
import sys
import threading

import pvaccess as pva


def _plain(v: object) -> object:
    """pvapy gives unions as ({member: value}, {member: type}): unwrap to the value."""
    if isinstance(v, tuple):
        v = v[0]
    if isinstance(v, dict) and len(v) == 1:
        v = next(iter(v.values()))
    return v


def main() -> int:
    pv, count, timeout, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    got: list[dict] = []
    done = threading.Event()
    live = threading.Event()
    lock = threading.Lock()

    def on_update(v: pva.PvObject) -> None:
        d = v.get()
        uid = int(d["uniqueId"])
        live.set()
        if uid == 0:
            return  # the idle image served before acquisition
        attrs = {a["name"]: _plain(a["value"]) for a in d.get("attribute", [])}
        values = d["value"][0] if isinstance(d["value"], tuple) else d["value"]
        ((kind, arr),) = values.items()
        with lock:
            got.append({"uniqueId": uid, "kind": kind,
                        "dims": [int(x["size"]) for x in d["dimension"]],
                        "n": len(arr), "sum": int(sum(int(a) for a in arr[:256])),
                        "PositionX": float(attrs.get("PositionX", float("nan"))),
                        "PositionY": float(attrs.get("PositionY", float("nan")))})
            if len(got) >= count:
                done.set()

    ch = pva.Channel(pv)
    ch.get("field(uniqueId)")  # connect first
    # no setMonitorMaxQueueLength(): with it, pvapy 5.6 often delivered no update at all
    ch.subscribe("collect", on_update)
    ch.startMonitor("field()")
    if not live.wait(30):  # the first update proves the subscription is live
        print("no first update within 30 s", flush=True)
        return 1
    print("ready", flush=True)
    done.wait(timeout)
    ch.stopMonitor()
    with lock:
        json.dump(got, open(out, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
