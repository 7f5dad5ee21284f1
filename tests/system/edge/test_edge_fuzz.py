"""Fuzz a running edge: junk put to every writable PV, malformed frames, corrupted models.

One ``ptychoflow edge`` serves the whole module (starting one per example
would cost the CI minutes). After every put the edge must be alive, its
read-backs must answer, nothing invalid may have taken effect (the model
version, the followed input), and it must still publish the next frame from
the source with the phase of the model it serves. Malformed frames, built by
the strategies of ``tests/unit/test_edge_fuzz_frames.py``, are each counted in
``Edge:BadFrames_RBV``, while the edge's resident memory stays flat.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from p4p import Type, Value
from p4p.nt import NTScalar

from ptychoflow.edge.bench.models import affine_model, write_card
from ptychoflow.epicsenv import isolated_env, pva_conf, random_prefix
from ptychoflow.ntnda import placeholder, read_frame, timestamp_of
from ptychoflow.preprocess import Preprocess
from ptychoflow.pvnames import EDGE, PVSpec
from tests.conftest import ServerProcess, wait_for_pva
from tests.system.edge.edge_helpers import PIXEL, Collector, FrameSource, edge_args
from tests.unit.test_edge_fuzz_frames import good_fields, malformed_fields, ntndarray

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

WRITABLE = [s for s in EDGE if s.access == "W"]
PUTS_PER_PV = 40
FRAMES = 300  # distinct malformed frames hypothesis makes, each sent once ...
REPLAYS = 10  # ... then all of them this many times more, watching the edge's memory
RSS_GROWTH_LIMIT_KB = 40 * 1024
PRE = Preprocess(input_size=32, intensity="linear")  # the test models' card
GOOD = np.ones((32, 32), np.float32)  # a model-vN answers it with a phase of N everywhere
AT_ORIGIN = {"PositionX": 0.0, "PositionY": 0.0}


class Source(FrameSource):
    """The detector's image PV, plus PVs an operator could point Edge:Input at by mistake."""

    LOOKALIKE = Type([("value", ("U", None, [("floatValue", "af")])), ("uniqueId", "d"),
                      ("dimension", ("aS", None, [("size", "i")]))],
                     id="epics:nt/NTNDArray:1.0")

    def start(self) -> None:
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        self.shared = SharedPV(initial=placeholder())
        self.counter = SharedPV(nt=NTScalar("d"), initial=0.0)
        # an NTNDArray look-alike with a floating-point uniqueId
        self.lookalike = SharedPV(initial=Value(self.LOOKALIKE, {"uniqueId": math.inf}))
        self.server = Server(providers=[{self.pv: self.shared, self.counter_pv: self.counter,
                                         self.lookalike_pv: self.lookalike}],
                             conf=pva_conf(self.env), useenv=False)

    @property
    def counter_pv(self) -> str:
        return self.pv.replace("Image", "Counter")

    @property
    def lookalike_pv(self) -> str:
        return self.pv.replace("Image", "Lookalike")


@dataclass
class FuzzEdge:
    """The edge under test and everything around it."""

    proc: ServerProcess
    prefix: str
    source: Source
    collector: Collector
    model_dir: Path
    outside: Path
    uid: int = 0
    version: int = 1  # of the model the edge serves
    messages: list[str] = field(default_factory=list)  # every Message_RBV update

    def pv(self, spec: PVSpec) -> str:
        return spec.name(self.prefix)

    def get(self, spec: PVSpec) -> Any:
        return self.collector.get(self.pv(spec))

    def put(self, spec: PVSpec, value: Any) -> None:
        self.collector.put(self.pv(spec), value)

    def next_uid(self) -> int:
        self.uid += 1
        return self.uid

    def wait_message(self, since: int, pred: Callable[[str], bool], timeout: float = 30.0
                     ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages[since:]:
                if pred(m):
                    return m
            time.sleep(0.02)
        raise AssertionError(f"no such message in {timeout} s; got {self.messages[since:]}")

    def assert_serves_next_frame(self) -> None:
        """Alive, read-backs answer, and the next frame comes out with the served model's phase."""
        assert self.proc.alive(), self.proc.log()[-3000:]
        for spec in EDGE:
            if spec.record.startswith("NTScalar"):
                self.get(spec)
        uid = self.next_uid()
        self.source.publish(GOOD, uid, AT_ORIGIN)
        got = self.collector.wait_for(self.pv(EDGE.phase),
                                      lambda fr: any(f.unique_id == uid for f in fr[-8:]), 15.0)
        frame = next(f for f in reversed(got) if f.unique_id == uid)
        assert float(frame.array.mean()) == self.version
        assert self.get(EDGE.model_version) == self.version

    def counters(self) -> tuple[int, int]:
        return self.get(EDGE.bad_frames), self.get(EDGE.processed)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def _models(root: Path) -> tuple[Path, Path]:
    """model-v1 (identity) and v2 (2x) as the other edge tests have them, and broken ones."""
    d = root / "models"
    affine_model(d / "model-v1.onnx", 32)
    write_card(d / "model-v1.onnx", 1, PRE, PIXEL)
    affine_model(d / "model-v2.onnx", 32, scale=2.0)
    write_card(d / "model-v2.onnx", 2, PRE, PIXEL)
    whole = (d / "model-v1.onnx").read_bytes()
    # truncated, with a card written for the truncated file (so onnxruntime reads it) ...
    (d / "model-v4.onnx").write_bytes(whole[: len(whole) // 2])
    write_card(d / "model-v4.onnx", 4, PRE, PIXEL)
    # ... and truncated under the card of the whole file (the checksum refuses it)
    (d / "model-v5.onnx").write_bytes(whole[: len(whole) - 7])
    shutil.copy(d / "model-v1.json", d / "model-v5.json")
    # a card that says 64x64 inputs for a 32x32 network
    affine_model(d / "model-v6.onnx", 32)
    write_card(d / "model-v6.onnx", 6, Preprocess(input_size=64, intensity="linear"), PIXEL)
    # a network that answers NaN: output = x * NaN
    affine_model(d / "model-v10.onnx", 32, scale=math.nan)
    write_card(d / "model-v10.onnx", 10, PRE, PIXEL)
    # random bytes named like a model, no card
    (d / "model-v9.onnx").write_bytes(np.random.default_rng(9).bytes(3000))
    # outside the folder: a good model, and a link in the folder pointing at another one
    outside = root / "outside"
    affine_model(outside / "model-v8.onnx", 32, scale=8.0)
    write_card(outside / "model-v8.onnx", 8, PRE, PIXEL)
    affine_model(outside / "model-v7.onnx", 32, scale=7.0)
    write_card(outside / "model-v7.onnx", 7, PRE, PIXEL)
    os.symlink(outside / "model-v7.onnx", d / "model-v7.onnx")
    shutil.copy(outside / "model-v7.json", d / "model-v7.json")
    return d, outside


@pytest.fixture(scope="module")
def fuzz_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzEdge]:
    root = tmp_path_factory.mktemp("edge-fuzz")
    model_dir, outside = _models(root)
    prefix = random_prefix()
    source_env, edge_env = isolated_env(), isolated_env()
    edge_env["EPICS_PVA_NAME_SERVERS"] += f" 127.0.0.1:{source_env['EPICS_PVA_SERVER_PORT']}"
    source = Source(source_env, prefix + "Src:Image")
    # deep queues: a burst of a few hundred frames waits instead of being squashed
    args = [*edge_args(prefix, source.pv, model_dir / "model-v1.onnx"),
            "--input-queue", "1024", "--queue-size", "8192"]
    proc = ServerProcess([sys.executable, "-m", "ptychoflow.cli", *args], edge_env,
                         root / "edge.log")
    collector = Collector(edge_env)
    try:
        wait_for_pva(edge_env, EDGE.processed.name(prefix), timeout=60, server=proc)
        fe = FuzzEdge(proc, prefix, source, collector, model_dir, outside)
        collector.watch(fe.pv(EDGE.phase))
        sub = collector.ctx.monitor(fe.pv(EDGE.message), lambda v: fe.messages.append(
            str(v["value"])), request="record[queueSize=1000]")
        fe.assert_serves_next_frame()
        yield fe
        sub.close()
        assert proc.alive(), proc.log()[-3000:]
    finally:
        collector.close()
        proc.stop()
        source.stop()


# ---- 1. junk put to every writable PV -----------------------------------------------------
def _junk(fe: FuzzEdge) -> st.SearchStrategy[Any]:
    d = fe.model_dir
    paths = st.sampled_from([
        "1", "2", "model-v1.onnx", "model-v2.onnx", "./model-v2.onnx", "sub/../model-v1.onnx",
        str(d / "model-v2.onnx"), "\u0661",  # Arabic-Indic digit one: int() reads 1
        "3", "4", "5", "6", "7", "9", "10", "model-v9.onnx", "model-v10.onnx", "model-v7.onnx",
        "../outside/model-v8.onnx", str(fe.outside / "model-v8.onnx"), "/etc/passwd",
        "../" * 12 + "etc/passwd", "..", ".", "/", "", " ", "model-v1.json",
        "model-v1.onnx; rm -rf ~", "$(touch /tmp/pwned).onnx", "`id`.onnx", "| cat", "&& ls",
        "model-v1.onnx\x00.txt", "~/model-v1.onnx", "~nosuchuser/model-v1.onnx", "9" * 400,
        "9" * 5000, "\u00b2", "model-v1.onnx\n2", fe.source.pv, fe.source.counter_pv,
        fe.source.lookalike_pv, f"{fe.source.pv} {fe.source.pv}", f"{fe.source.pv},x",
    ])
    return st.one_of(
        paths, paths, st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 2, -1, 2**31, 2**63]),
        st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=40),
        st.builds(lambda c, n: c * n, st.characters(), st.sampled_from([1000, 100_000])),
        st.lists(st.integers(-5, 5), max_size=3), st.binary(max_size=20), st.none())


def _try_put(fe: FuzzEdge, spec: PVSpec, value: Any) -> bool:
    try:
        fe.put(spec, value)
        return True
    except Exception:  # noqa: BLE001 - refusals (RemoteError) and client-side conversion errors
        return False


def test_every_writable_pv_refuses_junk_and_keeps_serving(fuzz_edge: FuzzEdge) -> None:
    fe = fuzz_edge
    counts = {s.suffix: {"accepted": 0, "refused": 0} for s in WRITABLE}
    counts[EDGE.model_load.suffix] |= {"loaded": 0, "refused on loading": 0}
    log_start = len(fe.proc.log())

    @settings(max_examples=PUTS_PER_PV * len(WRITABLE), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(WRITABLE), _junk(fe))
    # what the fuzzing found once, every time: names the file system or pathlib refuse
    @example(EDGE.model_load, "9" * 400)
    @example(EDGE.model_load, "x" * 100_000)
    @example(EDGE.model_load, "~nosuchuser/model-v1.onnx")
    @example(EDGE.model_load, "model-v1.onnx\x00.txt")
    @example(EDGE.input, "x" * 100_000)
    def fuzz(spec: PVSpec, value: Any) -> None:
        before = fe.get(spec)
        since = len(fe.messages)
        accepted = _try_put(fe, spec, value)
        counts[spec.suffix]["accepted" if accepted else "refused"] += 1
        if not accepted:
            assert fe.get(spec) == before  # the read-back of a refused put stays as it was
        elif spec == EDGE.model_load:  # loaded in the background: served, or refused
            said = fe.wait_message(since, lambda m: "now serving" in m or "refused" in m)
            if "now serving" in said:
                fe.version = fe.get(EDGE.model_version)
            counts[spec.suffix]["loaded" if "now serving" in said else "refused on loading"] += 1
        elif spec == EDGE.input:  # followed (any one name is a PV name): follow the source again
            if isinstance(value, str) and "\x00" not in value:
                assert fe.get(spec) == value
            fe.put(EDGE.input, fe.source.pv)
        elif spec == EDGE.enable:
            assert isinstance(fe.get(spec), int)
            fe.put(EDGE.enable, 1)
        # only a model of the folder that passed every check may serve
        assert fe.version in (1, 2), (value, fe.messages[since:])
        fe.assert_serves_next_frame()

    fuzz()
    print(f"puts accepted / refused per PV: {counts}")
    assert all(c["refused"] > 0 for c in counts.values()), counts
    assert counts[EDGE.model_load.suffix]["refused"] >= PUTS_PER_PV // 4, counts
    assert fe.get(EDGE.input) == fe.source.pv
    assert "Traceback" not in fe.proc.log()[log_start:]  # every refusal was a clean one


# ---- 2. corrupted models ------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "why"), [
    ("model-v4.onnx", "cannot load"),            # truncated, its card matching: onnxruntime
    # truncated under the whole file's card: its checksum refuses it before any engine
    # parses it
    ("5", "sha256"),
    ("model-v6.onnx", "input shape"),            # the card says 64x64 inputs, the net takes 32
    ("model-v9.onnx", "cannot load"),            # random bytes, no card
    ("10", "not finite"),                        # outputs NaN on the warm-up frame
])
def test_a_corrupted_model_is_refused_and_the_old_one_keeps_serving(
        fuzz_edge: FuzzEdge, spec: str, why: str) -> None:
    fe = fuzz_edge
    since = len(fe.messages)
    fe.put(EDGE.model_load, spec)  # the path is fine: the load fails in the background
    said = fe.wait_message(since, lambda m: "refused" in m or "now serving" in m)
    assert "refused, previous model still serving" in said and re.search(why, said), said
    fe.assert_serves_next_frame()


def test_a_prediction_that_is_not_finite_is_counted_bad_and_never_published(
        fuzz_edge: FuzzEdge) -> None:
    fe = fuzz_edge
    if fe.version != 2:  # 2x: a finite input near float32's top makes an infinite phase
        since = len(fe.messages)
        fe.put(EDGE.model_load, "2")
        fe.wait_message(since, lambda m: "now serving" in m)
        fe.version = 2
    bad0 = fe.get(EDGE.bad_frames)
    uid = fe.next_uid()
    fe.source.publish(np.full((32, 32), 2e38, np.float32), uid, AT_ORIGIN)
    fe.assert_serves_next_frame()
    deadline = time.monotonic() + 10
    while fe.get(EDGE.bad_frames) < bad0 + 1:
        assert time.monotonic() < deadline, fe.messages[-3:]
        time.sleep(0.1)
    assert fe.get(EDGE.bad_frames) == bad0 + 1
    assert all(f.unique_id != uid for f in fe.collector.frames(fe.pv(EDGE.phase)))
    stitched = read_frame(fe.collector.ctx.get(fe.pv(EDGE.stitched), timeout=5.0))
    assert np.isfinite(stitched.array).all()


@pytest.mark.parametrize("spec", ["7", "model-v7.onnx", "../outside/model-v8.onnx",
                                  "{outside}/model-v8.onnx"])
def test_a_model_outside_the_folder_is_refused_at_the_put(fuzz_edge: FuzzEdge,
                                                          spec: str) -> None:
    fe = fuzz_edge  # model-v7.onnx is a link in the folder pointing outside it
    with pytest.raises(Exception, match="outside the model folder"):
        fe.put(EDGE.model_load, spec.format(outside=fe.outside))
    fe.assert_serves_next_frame()


# ---- 3. malformed frames ------------------------------------------------------------------
def expected_outcome(value: Value) -> str:
    """What the edge must make of a frame: "bad" (refused, counted) or "good" (published)."""
    try:
        a = read_frame(value).array
    except ValueError:
        return "bad"
    if a.size == 0 or a.dtype.kind not in "uif":
        return "bad"
    try:
        PRE.check_frame_shape(a.shape)
    except ValueError:
        return "bad"
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return "bad"
    with np.errstate(over="ignore", invalid="ignore"):
        if not np.isfinite(PRE(a)).all():  # finite, but not once float32 (the net's input)
            return "bad"
    return "good"


class Oracle:
    """What the edge must make of each frame in the order sent, its re-send rule included:
    a frame that decodes with the uniqueId and time stamp of the frame just before it is
    that frame again (a reconnect re-sends the current value), neither published nor bad.
    """

    def __init__(self) -> None:
        self.last: tuple[int, float | None] | None = None

    def judge(self, value: Value) -> str:
        outcome = expected_outcome(value)
        uid = int(value["uniqueId"])
        try:
            key: tuple[int, float | None] = (uid, read_frame(value).timestamp)
        except ValueError:
            key = (uid, None)
        if key[1] is not None and key == self.last:
            return "re-sent"
        if uid > 0:
            self.last = key
        return outcome


def _odd_position(value: Value) -> bool:
    """Positions the map may refuse (placed too far): such a frame may count as bad too."""
    try:
        attrs = read_frame(value).attributes
        return any(k in attrs and attrs[k] != 0.0 for k in AT_ORIGIN)
    except ValueError:
        return False


def _frame_stream() -> st.SearchStrategy[dict[str, Any]]:
    base = good_fields(shape=st.sampled_from([(32, 32), (32, 32), (40, 40), (16, 16)]),
                       dtype=st.sampled_from([np.float32, np.float64, np.uint16, np.int32,
                                              np.uint8]))
    return st.one_of(malformed_fields(base=base), malformed_fields(corrupt=True, base=base))


def _send(fe: FuzzEdge, value: Value, own_uid: bool) -> None:
    """Post with a time stamp of its own (a repeat of the same is a reconnect's) and the next
    uniqueId, unless the frame's odd uniqueId is what it tests.
    """
    uid = fe.next_uid()
    if not own_uid:
        value["uniqueId"] = uid
    value["dataTimeStamp.secondsPastEpoch"] = 1_700_000_000 + uid
    fe.source.shared.post(value)


def _settled(fe: FuzzEdge, timeout: float = 30.0) -> tuple[int, int]:
    """(bad, processed) once two status updates in a row agree (they come twice a second)."""
    deadline = time.monotonic() + timeout
    last = fe.counters()
    while time.monotonic() < deadline:
        time.sleep(0.6)
        now = fe.counters()
        if now == last:
            return now
        last = now
    raise AssertionError(f"counters (bad, processed) still moving after {timeout} s: {last}")


def _wait_counted(fe: FuzzEdge, bad: int, processed: int, timeout: float = 60.0) -> None:
    """Until the edge has counted as many frames, bad or published, as these add up to."""
    deadline = time.monotonic() + timeout
    while True:
        got = fe.counters()
        if sum(got) >= bad + processed:
            return
        assert time.monotonic() < deadline, (got, (bad, processed), fe.messages[-3:])
        time.sleep(0.1)


@dataclass
class Sent:
    value: Value
    outcome: str  # what the edge must make of it: "bad", "good" or "re-sent"
    far: bool  # placed off the origin: the map may refuse it (as too far)
    own_uid: bool


def _key(ts: float) -> float:
    return round(ts, 3)  # a frame's own: the test gives each a second of its own


def _mismatch(sent: list[Sent], published: list[Any]) -> str:
    """The frames the edge judged otherwise than the test, to name in a failure."""
    out = [_key(f.timestamp) for f in published]
    lines = []
    for s in sent:
        n = out.count(_key(timestamp_of(s.value)))
        if (n > 0) != (s.outcome == "good") or n > 1:
            v = s.value
            raw = v["value"]
            lines.append(f"expected {s.outcome}, published {n} time(s): uniqueId "
                         f"{v['uniqueId']}, dataTimeStamp {v['dataTimeStamp.secondsPastEpoch']} "
                         f"s {v['dataTimeStamp.nanoseconds']} ns, value "
                         f"{None if raw is None else (raw.dtype, raw.shape)}, dimension "
                         f"{[d['size'] for d in v['dimension']]}, codec {v['codec.name']!r}")
    return "\n".join(lines) or f"no frame differs; published {out}"


def test_malformed_frames_are_counted_as_bad_and_memory_stays_flat(fuzz_edge: FuzzEdge
                                                                     ) -> None:
    fe = fuzz_edge
    if fe.version != 1:  # the identity: a finite input gives a finite phase
        since = len(fe.messages)
        fe.put(EDGE.model_load, "1")
        fe.wait_message(since, lambda m: "now serving" in m)
        fe.version = 1
    bad0, processed0 = _settled(fe)
    log_start = len(fe.proc.log())
    phases_start = len(fe.collector.frames(fe.pv(EDGE.phase)))
    oracle = Oracle()
    sent: list[Sent] = []

    @settings(max_examples=FRAMES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_frame_stream())
    def fuzz(fields: dict[str, Any]) -> None:
        value = ntndarray(fields)
        own_uid = int(value["uniqueId"]) not in (0, 1)  # 1: the strategy's own; others: odd
        _send(fe, value, own_uid)
        sent.append(Sent(value, oracle.judge(value), _odd_position(value), own_uid))

    fuzz()
    n = Counter(s.outcome for s in sent)
    far = sum(1 for s in sent if s.outcome == "good" and s.far)
    fe.assert_serves_next_frame()
    oracle.last = None  # the frame it served came in between
    _wait_counted(fe, bad0 + n["bad"], processed0 + n["good"] + 1)
    bad, processed = _settled(fe)
    published = fe.collector.frames(fe.pv(EDGE.phase))[phases_start:]
    assert processed - processed0 == n["good"] + 1, _mismatch(sent, published)  # each once
    assert n["bad"] <= bad - bad0 <= n["bad"] + far  # every bad one counted (+ map refusals)
    assert any("bad frame skipped" in m for m in fe.messages)
    assert all(np.isfinite(f.array).all() for f in published)  # nothing spoils the map
    print(f"{len(sent)} frames: {dict(n)}; the edge counted {bad - bad0} bad")

    def replay() -> Counter[str]:
        bad_now, processed_now = fe.counters()
        got: Counter[str] = Counter()
        for s in sent:
            _send(fe, s.value, s.own_uid)
            outcome = oracle.judge(s.value)
            got[outcome] += 1
            got["far"] += outcome == "good" and s.far
        _wait_counted(fe, bad_now + got["bad"], processed_now + got["good"])
        return got

    replay()  # warm: the first repeat may still fill caches
    rss0 = fe.rss_kb()
    bad0, processed0 = _settled(fe)
    total: Counter[str] = sum((replay() for _ in range(REPLAYS)), Counter())
    fe.assert_serves_next_frame()
    bad, processed = _settled(fe)
    grown = fe.rss_kb() - rss0
    print(f"edge VmRSS {rss0} kB, grew {grown} kB over {REPLAYS * len(sent)} more frames")
    assert processed - processed0 == total["good"] + 1
    assert total["bad"] <= bad - bad0 <= total["bad"] + total["far"]
    assert grown < RSS_GROWTH_LIMIT_KB
    assert "Traceback" not in fe.proc.log()[log_start:]  # nothing escaped a callback
    stitched = read_frame(fe.collector.ctx.get(fe.pv(EDGE.stitched), timeout=5.0))
    assert stitched.attributes["Frames"] > 0 and np.isfinite(stitched.array).all()


# ---- 4. Edge:Input pointed at a PV that is no detector image ------------------------------
def test_updates_of_a_pv_that_is_no_image_are_counted_as_bad_frames(fuzz_edge: FuzzEdge
                                                                       ) -> None:
    fe = fuzz_edge
    log_start = len(fe.proc.log())
    for pv, shared, update in [
            (fe.source.counter_pv, fe.source.counter, 5.0),
            (fe.source.lookalike_pv, fe.source.lookalike,
             Value(Source.LOOKALIKE, {"uniqueId": math.nan,
                                      "value": ("floatValue", np.ones(4, np.float32))}))]:
        bad0 = fe.get(EDGE.bad_frames)
        fe.put(EDGE.input, pv)
        # the current value on connecting, then an update
        deadline = time.monotonic() + 15
        while fe.get(EDGE.bad_frames) < bad0 + 1:
            assert time.monotonic() < deadline, fe.messages[-3:]
            time.sleep(0.1)
        shared.post(update)
        while fe.get(EDGE.bad_frames) < bad0 + 2:
            assert time.monotonic() < deadline, fe.messages[-3:]
            time.sleep(0.1)
    # said on Message_RBV (at most once a second: a new update once the last was said)
    since = len(fe.messages)
    fe.put(EDGE.input, fe.source.counter_pv)
    said = False
    for k in range(20):
        fe.source.counter.post(float(k))
        try:
            fe.wait_message(since, lambda m: "bad frame" in m and "not an NTNDArray" in m, 0.3)
            said = True
            break
        except AssertionError:
            continue
    assert said, fe.messages[since:]
    fe.put(EDGE.input, fe.source.pv)
    fe.assert_serves_next_frame()
    assert "Traceback" not in fe.proc.log()[log_start:]
