"""Helpers of the edge system tests: a frame source served from the test, a PV collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptychoflow.epicsenv import pva_conf
from ptychoflow.ntnda import make_frame, placeholder, read_frame

PIXEL = 10e-9  # output pixel of the test models, metres

class FrameSource:
    """An areaDetector-like NTNDArray PV served from the test process (restartable)."""

    def __init__(self, env: dict[str, str], pv: str) -> None:
        self.env, self.pv = env, pv
        self.server: Any = None
        self.shared: Any = None
        self.start()

    def start(self) -> None:
        from p4p.server import Server
        from p4p.server.thread import SharedPV

        # empty until the first frame, as areaDetector's NDPluginPva and pvapy serve it
        self.shared = SharedPV(initial=placeholder())
        self.server = Server(providers=[{self.pv: self.shared}], conf=pva_conf(self.env),
                             useenv=False)

    def stop(self) -> None:
        if self.server is not None:
            self.shared.close()
            self.server.stop()
            self.server = None

    def publish(self, array: np.ndarray, uid: int, attrs: dict[str, Any] | None = None,
                ts: float | None = None) -> None:
        self.shared.post(make_frame(array, uid, ts, attrs))

    def publish_undecodable(self, uid: int) -> None:
        """A frame the edge cannot take as an image: three dimensions, as an RGB camera's."""
        v = make_frame(np.ones((2, 32, 16), np.uint8).reshape(32, 32), uid)
        v["dimension"] = [{"size": 2}, {"size": 16}, {"size": 32}]
        self.shared.post(v)


class Collector:
    """Monitors edge image PVs from the test; keeps every update (uniqueId, array, ts)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._ctx: Any = None
        self.subs: list[Any] = []
        self.got: dict[str, list[Any]] = {}
        self.lock = threading.Lock()

    @property
    def ctx(self) -> Any:
        """Created at first use, once the servers are up: a name-server connection refused
        at creation is only retried after many seconds."""
        if self._ctx is None:
            from p4p.client.thread import Context

            self._ctx = Context("pva", conf=pva_conf(self.env), useenv=False, nt=False)
        return self._ctx

    def watch(self, pv: str, timeout: float = 30.0) -> None:
        """Subscribe to ``pv``; returns once subscribed: the first update (the PV's current
        value, as pvAccess sends on connecting) is the signal."""
        self.got[pv] = []
        subscribed = threading.Event()

        def cb(v: Any, pv: str = pv) -> None:
            if isinstance(v, Exception):
                return
            subscribed.set()
            f = read_frame(v)
            if f.unique_id == 0 and f.array.size <= 1:
                return
            with self.lock:
                self.got[pv].append(f)

        self.subs.append(self.ctx.monitor(pv, cb, request="record[queueSize=1000]",
                                          notify_disconnect=True))
        if not subscribed.wait(timeout):
            raise AssertionError(f"{pv}: no first update in {timeout} s (not subscribed)")

    def frames(self, pv: str) -> list[Any]:
        with self.lock:
            return list(self.got[pv])

    def wait_for(self, pv: str, pred: Callable[[list[Any]], bool], timeout: float = 30.0
                 ) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fr = self.frames(pv)
            if pred(fr):
                return fr
            time.sleep(0.05)
        fr = self.frames(pv)
        raise AssertionError(f"{pv}: condition not met in {timeout} s; got {len(fr)} updates, "
                             f"ids {[f.unique_id for f in fr][-20:]}")

    def get(self, pv: str) -> Any:
        v = self.ctx.get(pv, timeout=5.0)
        return v["value"]

    def wait_value(self, pv: str, pred: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.get(pv)
            if pred(v):
                return v
            time.sleep(0.1)
        raise AssertionError(f"{pv} = {v!r} after {timeout} s")

    def put(self, pv: str, value: Any) -> None:
        self.ctx.put(pv, value, timeout=10.0)

    def close(self) -> None:
        for s in self.subs:
            s.close()
        if self._ctx is not None:
            self._ctx.close()


def edge_args(prefix: str, input_pv: str, model: Path, *extra: str) -> list[str]:
    return ["edge", "--prefix", prefix, "--input", input_pv, "--model", str(model),
            "--threads", "1", *extra]
