"""kill -9 of the edge under a stream: a restart serves the last deployed model, on a new map.

procServ or systemd restart the edge with the command line it first started with, whose
``--model`` is the model of the first day; the IOC deployed newer ones since by a put to
``Edge:Model:Load``. The edge records the model it serves in its model folder, atomically,
and a restart serves that one again (``--no-resume``: ``--model``). An edge of several lanes
does the same, and its lane processes do not outlive it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychoflow.modelcard import ModelCard, card_path
from ptychoflow.pvnames import EDGE
from tests.conftest import ServerProcess, wait_for_pva
from tests.system.edge.edge_helpers import Collector, FrameSource, edge_args
from tests.system.edge.test_edge_lanes import TwoPVSource

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ONES = np.ones((32, 32), np.float32)  # a model-vN answers it with a phase of N everywhere
AT_ORIGIN = {"PositionX": 0.0, "PositionY": 0.0}
AFTER_RESTART = 5  # frames sent to the restarted edge


class Stream:
    """Frames of ones at a steady rate, uniqueId counting on, until stopped."""

    def __init__(self, source: FrameSource, rate: float = 50.0) -> None:
        self.source, self.rate = source, rate
        self.uid = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0 / self.rate):
            self.uid += 1
            self.source.publish(ONES, self.uid, AT_ORIGIN)

    def wait_past(self, uid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.uid <= uid:
            assert time.monotonic() < deadline, f"the stream stalled at {self.uid}"
            time.sleep(0.02)

    def stop(self) -> int:
        """Stop; the last uniqueId sent."""
        self._stop.set()
        self._thread.join(5)
        return self.uid


def _pv(prefix: str, spec: Any) -> str:
    return str(spec.name(prefix))


def _left_over(model_dir: Path) -> list[str]:
    """Half-written files: temporary copies of a write that never finished."""
    return sorted(p.name for p in model_dir.iterdir()
                  if p.name.endswith((".part", ".tmp")) or p.name.startswith(".#"))


def _records(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob(".edge-serving*.json"))


def _deploy_v2_under_a_stream_then_kill9(start_server: Any, edge_env: dict[str, str],
                                         prefix: str, source: FrameSource, model_dir: Path,
                                         args: list[str]) -> tuple[Stream, int]:
    """Start on v1, deploy v2 while frames stream, get them on the map, kill -9 the edge.

    Returns the stream (still publishing: the source outlives the edge) and the number of
    frames on the map at the kill.
    """
    edge: ServerProcess = start_server(args, edge_env, name="edge")
    wait_for_pva(edge_env, _pv(prefix, EDGE.processed), timeout=60, server=edge)
    c = Collector(edge_env)
    messages: list[str] = []
    try:
        c.watch(_pv(prefix, EDGE.phase))
        c.watch(_pv(prefix, EDGE.stitched))
        sub = c.ctx.monitor(_pv(prefix, EDGE.message), lambda v: messages.append(
            str(v["value"])), request="record[queueSize=100]")
        assert c.get(_pv(prefix, EDGE.model_version)) == 1
        stream = Stream(source)
        c.wait_for(_pv(prefix, EDGE.phase), lambda fr: len(fr) >= 10)
        c.put(_pv(prefix, EDGE.model_load), "model-v2.onnx")
        c.wait_for(_pv(prefix, EDGE.phase),
                   lambda fr: sum(float(f.array.mean()) == 2.0 for f in fr) >= 10)
        assert any("now serving model-v2.onnx (version 2)" in m for m in messages), messages
        stitched = c.wait_for(_pv(prefix, EDGE.stitched),
                              lambda fr: bool(fr) and fr[-1].attributes["Frames"] >= 20)
        on_map = int(stitched[-1].attributes["Frames"])
        sub.close()
    finally:
        c.close()
    at_kill = stream.uid
    edge.kill9()
    stream.wait_past(at_kill + 5)  # the source goes on publishing to no one
    return stream, on_map


def _check_the_folder_after_the_kill(model_dir: Path) -> dict[str, Any]:
    """Nothing half-written, every model whole against its card; the record, parsed."""
    assert _left_over(model_dir) == []
    for model in model_dir.glob("model-v*.onnx"):
        ModelCard.load(card_path(model)).verify_file(model)
    (record,) = _records(model_dir)
    data = json.loads(record.read_text())
    assert isinstance(data, dict)
    return data


def test_a_restart_after_kill9_serves_the_model_deployed_last_on_a_new_map(
        start_server, edge_env, prefix, source: FrameSource, model_dir: Path) -> None:
    args = edge_args(prefix, source.pv, model_dir / "model-v1.onnx")
    stream, on_map = _deploy_v2_under_a_stream_then_kill9(start_server, edge_env, prefix,
                                                          source, model_dir, args)
    last = stream.stop()
    record = _check_the_folder_after_the_kill(model_dir)
    assert (record["model"], record["version"]) == ("model-v2.onnx", 2)

    edge = start_server(args, edge_env, name="edge-restarted")  # the same command line
    wait_for_pva(edge_env, _pv(prefix, EDGE.processed), timeout=60, server=edge)
    c = Collector(edge_env)
    try:
        assert c.get(_pv(prefix, EDGE.model_version)) == 2
        said = [line for line in edge.log().splitlines() if "resuming" in line]
        assert said and "model-v2.onnx (version 2), the model served before the restart" \
            in said[0] and "--no-resume" in said[0], edge.log()[-3000:]
        c.watch(_pv(prefix, EDGE.phase))
        c.watch(_pv(prefix, EDGE.stitched))
        for uid in range(last + 1, last + 1 + AFTER_RESTART):
            source.publish(ONES, uid, AT_ORIGIN)
            time.sleep(0.02)
        got = c.wait_for(_pv(prefix, EDGE.phase),
                         lambda fr: any(f.unique_id == last + AFTER_RESTART for f in fr))
        new = [f for f in got if f.unique_id > last]
        assert [f.unique_id for f in new] == list(range(last + 1, last + 1 + AFTER_RESTART))
        assert {float(f.array.mean()) for f in new} == {2.0}  # v2's answer
        # a new map: it holds the frames of this process only (the source's current frame,
        # sent on connecting, and the new ones), none of the map before the kill
        deadline = time.monotonic() + 15
        while True:
            processed = c.get(_pv(prefix, EDGE.processed))
            frames = c.frames(_pv(prefix, EDGE.stitched))
            if frames and processed >= AFTER_RESTART \
                    and frames[-1].attributes["Frames"] == processed:
                break
            assert time.monotonic() < deadline, (processed, [
                f.attributes["Frames"] for f in frames[-3:]])
            time.sleep(0.1)
        assert processed in (AFTER_RESTART, AFTER_RESTART + 1)
        assert on_map > AFTER_RESTART + 1
    finally:
        c.close()
    assert edge.stop() == 0


def test_no_resume_serves_the_model_of_the_command_line(
        start_server, edge_env, prefix, source: FrameSource, model_dir: Path) -> None:
    args = edge_args(prefix, source.pv, model_dir / "model-v1.onnx")
    stream, _ = _deploy_v2_under_a_stream_then_kill9(start_server, edge_env, prefix, source,
                                                     model_dir, args)
    last = stream.stop()
    assert _check_the_folder_after_the_kill(model_dir)["version"] == 2

    edge = start_server([*args, "--no-resume"], edge_env, name="edge-restarted")
    wait_for_pva(edge_env, _pv(prefix, EDGE.processed), timeout=60, server=edge)
    c = Collector(edge_env)
    try:
        assert c.get(_pv(prefix, EDGE.model_version)) == 1
        assert "resuming" not in edge.log()
        c.watch(_pv(prefix, EDGE.phase))
        source.publish(ONES, last + 1, AT_ORIGIN)
        got = c.wait_for(_pv(prefix, EDGE.phase),
                         lambda fr: any(f.unique_id == last + 1 for f in fr))
        assert float(got[-1].array.mean()) == 1.0  # v1's answer
    finally:
        c.close()
    # the record follows what serves now: the next crash comes back to v1
    record = json.loads(_records(model_dir)[0].read_text())
    assert (record["model"], record["version"]) == ("model-v1.onnx", 1)
    assert edge.stop() == 0


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (the lanes, multiprocessing's resource tracker)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped by init


def test_lanes_resume_the_model_deployed_last_and_none_outlives_the_kill(
        start_server, edge_env, source_env, prefix, model_dir: Path) -> None:
    two = TwoPVSource(source_env, prefix)
    try:
        args = edge_args(prefix, " ".join(two.pvs), model_dir / "model-v1.onnx")
        edge = start_server(args, edge_env, name="edge")
        wait_for_pva(edge_env, _pv(prefix, EDGE.processed), timeout=60, server=edge)
        c = Collector(edge_env)
        try:
            assert c.get(_pv(prefix, EDGE.model_version)) == 1
            c.put(_pv(prefix, EDGE.model_load), "model-v2.onnx")
            c.wait_value(_pv(prefix, EDGE.model_version), lambda v: v == 2)  # every lane
        finally:
            c.close()
        lanes = _children(edge.proc.pid)
        assert len(lanes) >= 2
        edge.kill9()
        deadline = time.monotonic() + 20
        while not all(_gone(p) for p in lanes):
            assert time.monotonic() < deadline, [p for p in lanes if not _gone(p)]
            time.sleep(0.1)
        assert _check_the_folder_after_the_kill(model_dir)["model"] == "model-v2.onnx"

        edge = start_server(args, edge_env, name="edge-restarted")
        wait_for_pva(edge_env, _pv(prefix, EDGE.processed), timeout=60, server=edge)
        c = Collector(edge_env)
        try:
            assert c.get(_pv(prefix, EDGE.model_version)) == 2
            assert "resuming model-v2.onnx (version 2)" in edge.log()
            c.watch(_pv(prefix, EDGE.phase))
            c.wait_value(_pv(prefix, EDGE.message), lambda m: m == "connected to all 2 inputs")
            for uid in (1, 2):  # one through each lane
                two.publish(ONES, uid, AT_ORIGIN)
            got = c.wait_for(_pv(prefix, EDGE.phase), lambda fr: len(fr) >= 2)
            assert sorted(f.unique_id for f in got) == [1, 2]
            assert {float(f.array.mean()) for f in got} == {2.0}
        finally:
            c.close()
        assert edge.stop() == 0
    finally:
        two.stop()
