"""The run report through the IOC: Workflow:Report_RBV names it when a run ends, and an
IOC with an edge records the edge's speed for it."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from ioc_helpers import make_scan, wait_for
from test_ioc_workflow import message, put_start, wait_final

from ptychoflow.pvnames import EDGE, by_suffix

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]
pytest.importorskip("matplotlib")
INDEX = "index.html"


def text(v: Any) -> str:
    """A long string as read over PVA (QSRV may send a char array)."""
    raw = v.raw.value if hasattr(v, "raw") else v
    if isinstance(raw, str):
        return raw
    return bytes(raw.astype("uint8")).split(b"\0", 1)[0].decode()


def report_of(pva: Any, ioc: Any, run: int) -> Path:
    """Wait until Workflow:Report_RBV names run ``run``'s report; returns it."""
    want = f"run-{run:05d}/report/index.html"
    got = wait_for(lambda: (t := text(pva.get(ioc.pv("Workflow:Report_RBV")))).endswith(want)
                   and t, 60, f"Workflow:Report_RBV to name {want}", ioc)
    return Path(got)


def linked(index: Path) -> list[str]:
    return re.findall(r"(?:src|href)='([^']+)'", index.read_text())


class FakeEdge:
    """The edge's speed PVs and Edge:Model:Load on their own isolated ports (a real p4p
    server), posting a frame count that rises only while ``busy`` is set."""

    def __init__(self, epics_env: dict[str, str], tag: str) -> None:
        from p4p.nt import NTScalar
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        from ptychoflow.epicsenv import isolated_env, pva_conf

        self.prefix = "EDGE" + tag + ":"
        edge = by_suffix(EDGE)
        self.pvs = {s: SharedPV(nt=NTScalar(edge[s].record.split(":")[1]), initial=0)
                    for s in ("Edge:FrameRate_RBV", "Edge:Latency_RBV", "Edge:Processed_RBV",
                              "Edge:Dropped_RBV")}
        load = SharedPV(nt=NTScalar("s"), initial="")

        @load.put
        def _load(pv: Any, op: Any) -> None:
            pv.post(op.value())
            op.done()

        providers = {edge[s].name(self.prefix): pv for s, pv in self.pvs.items()}
        providers[edge["Edge:Model:Load"].name(self.prefix)] = load
        env = isolated_env()
        self.server = Server(providers=[providers], conf=pva_conf(env), useenv=False)
        self.names = (epics_env["EPICS_PVA_NAME_SERVERS"]
                      + f" 127.0.0.1:{env['EPICS_PVA_SERVER_PORT']}")
        self.busy = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._post, daemon=True)
        self.thread.start()

    def _post(self) -> None:
        processed = 0
        while not self.stop.wait(0.1):
            busy = self.busy.is_set()
            processed += 10 if busy else 0
            self.pvs["Edge:FrameRate_RBV"].post(100.0 if busy else 0.0)
            self.pvs["Edge:Latency_RBV"].post(5.0 if busy else 0.0)
            self.pvs["Edge:Processed_RBV"].post(processed)
            self.pvs["Edge:Dropped_RBV"].post(processed // 200)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.server.stop()


def test_report_rbv_names_the_report_of_the_run_that_ended(iocs, pva):
    ioc = iocs.start()
    pva.put(ioc.pv("Scan:Path"), str(make_scan(ioc.data / "scan-001.h5")))
    n = put_start(pva, ioc)
    assert wait_final(pva, ioc, run=n) == "Done", message(pva, ioc) + ioc.log()
    index = report_of(pva, ioc, n)
    assert index.is_file() and index == ioc.work / "runs" / f"run-{n:05d}" / "report" / INDEX
    page = index.read_text()
    assert f"run {n}: Done" in page and "No edge: this IOC has no edge_prefix" in page
    assert all((index.parent / ref).is_file() for ref in linked(index))
    assert "Report of run" not in message(pva, ioc)  # no report error
    assert ioc.stop() == 0


def test_an_ioc_with_an_edge_records_its_speed_for_the_report(iocs, pva, epics_env,
                                                               tmp_path):
    edge = FakeEdge(epics_env, tmp_path.name[-6:].replace("_", ""))
    try:
        ioc = iocs.start(edge_prefix=edge.prefix,
                         extra_env={"EPICS_PVA_NAME_SERVERS": edge.names})
        samples = ioc.work / "edge-samples.jsonl"
        wait_for(lambda: samples.is_file() and samples.stat().st_size > 0, 30,
                 "the IOC to record the edge's PVs", ioc)
        edge.busy.set()  # the scan: frames flow, then the file is complete
        wait_for(lambda: '"v": 100.0' in samples.read_text(), 30, "busy samples", ioc)
        scan = make_scan(ioc.data / "scan-001.h5")
        edge.busy.clear()
        pva.put(ioc.pv("Scan:Path"), str(scan))
        n = put_start(pva, ioc)
        assert wait_final(pva, ioc, run=n) == "Done", message(pva, ioc) + ioc.log()
        index = report_of(pva, ioc, n)
        assert "edge.png" in linked(index)
        assert all((index.parent / ref).is_file() for ref in linked(index))
        assert "from when Edge:Processed_RBV started rising" in index.read_text()
        lines = [json.loads(x) for x in samples.read_text().splitlines()]
        assert {x["pv"] for x in lines} == {"Edge:FrameRate_RBV", "Edge:Latency_RBV",
                                           "Edge:Processed_RBV", "Edge:Dropped_RBV"}
        assert ioc.stop() == 0
    finally:
        edge.close()

