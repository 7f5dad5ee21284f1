"""Fixtures for the edge system tests: a frame source, models, the edge in a subprocess.

The edge runs as ``ptychoflow edge`` in a subprocess (own isolated ports);
frame sources are a tiny p4p server in the test process (frames chosen by the
test: known objects, bad frames), the project's simulator or
pvapy-ad-sim-server, each with its own isolated ports. The edge's client
finds both through ``EPICS_PVA_NAME_SERVERS`` listing both servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ptychoflow.edge.bench.models import affine_model, write_card
from ptychoflow.epicsenv import isolated_env
from ptychoflow.preprocess import Preprocess
from tests.system.edge.edge_helpers import PIXEL, Collector, FrameSource


@pytest.fixture
def source_env() -> dict[str, str]:
    return isolated_env()


@pytest.fixture
def edge_env(source_env: dict[str, str]) -> dict[str, str]:
    """The edge's environment: its own ports, and it can also find the source's server."""
    env = isolated_env()
    env["EPICS_PVA_NAME_SERVERS"] = (f"{env['EPICS_PVA_NAME_SERVERS']} "
                                     f"127.0.0.1:{source_env['EPICS_PVA_SERVER_PORT']}")
    return env


@pytest.fixture
def source(source_env: dict[str, str], prefix: str) -> Iterator[FrameSource]:
    src = FrameSource(source_env, prefix + "Src:Image")
    yield src
    src.stop()


@pytest.fixture
def collector(edge_env: dict[str, str]) -> Iterator[Collector]:
    c = Collector(edge_env)
    yield c
    c.close()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """model-v1: identity (linear preprocessing, card); model-v2: 2x; both 32x32."""
    d = tmp_path / "models"
    pre = Preprocess(input_size=32, intensity="linear")
    affine_model(d / "model-v1.onnx", 32)
    write_card(d / "model-v1.onnx", 1, pre, PIXEL)
    affine_model(d / "model-v2.onnx", 32, scale=2.0)
    write_card(d / "model-v2.onnx", 2, pre, PIXEL)
    return d
