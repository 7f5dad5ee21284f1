"""What a restarted edge serves: the model recorded in its folder, or --model and why."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest

from ptychoflow.config import add_arguments, resolve
from ptychoflow.edge.bench.models import affine_model, write_card
from ptychoflow.edge.infer.hotswap import Served, prepare
from ptychoflow.edge.infer.modelcheck import ModelError
from ptychoflow.edge.infer.resume import ServingRecord, choose, load_first, start_message
from ptychoflow.edge.messages import ModelNote
from ptychoflow.edge.settings import EdgeSettings
from ptychoflow.preprocess import Preprocess

PREFIX = "BL7:edge:"
PRE = Preprocess(16, intensity="linear")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    for v in (1, 2):
        affine_model(d / f"model-v{v}.onnx", 16, scale=float(v))
        write_card(d / f"model-v{v}.onnx", v, PRE, 1e-8)
    return d


def _settings(folder: Path, **kw: object) -> EdgeSettings:
    return EdgeSettings(prefix=PREFIX, model=str(folder / "model-v1.onnx"), **kw)  # type: ignore[arg-type]


def _record(folder: Path, started_with: str | None = None) -> ServingRecord:
    v1 = str((folder / "model-v1.onnx").resolve())
    return ServingRecord(folder, PREFIX, v1 if started_with is None else started_with)


def _note(folder: Path, version: int) -> ModelNote:
    return ModelNote(version, str((folder / f"model-v{version}.onnx").resolve()), 1e-8, "CPU")


def test_the_record_is_written_whole_and_names_the_model_inside_the_folder(folder: Path
                                                                            ) -> None:
    rec = _record(folder)
    assert rec.write(_note(folder, 2))
    data = json.loads(rec.path.read_text())
    assert (data["model"], data["version"], data["prefix"]) == ("model-v2.onnx", 2, PREFIX)
    assert rec.path.parent == folder and rec.path.name.startswith(".edge-serving")
    assert [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []


def test_each_prefix_has_its_own_record(folder: Path) -> None:
    a, b = ServingRecord(folder, "A:", ""), ServingRecord(folder, "B:", "")
    a.write(_note(folder, 1))
    b.write(_note(folder, 2))
    assert a.path != b.path
    assert json.loads(a.path.read_text())["version"] == 1
    assert json.loads(b.path.read_text())["version"] == 2


def test_a_temporary_copy_left_by_a_kill_is_swept_at_start(folder: Path) -> None:
    path = _record(folder).path
    stale = path.with_name(f"{path.name}.12345.part")
    stale.write_text('{"model": "model-v')  # a write cut short
    other = folder / ".edge-serving-OTHER.json.999.part"  # another edge's, perhaps in flight
    other.write_text("{")
    _record(folder)
    assert not stale.exists() and other.exists()


def test_a_restart_resumes_the_recorded_model(folder: Path) -> None:
    _record(folder).write(_note(folder, 2))
    start = choose(_settings(folder), folder, _record(folder))
    assert (start.resumed, start.why_not) == ("model-v2.onnx", "")
    assert Path(start.spec) == (folder / "model-v2.onnx").resolve()
    msg = start_message(start, _note(folder, 2), _settings(folder))
    assert msg.startswith("resuming model-v2.onnx (version 2), the model served before the "
                          "restart, on CPU")
    assert "--no-resume serves model-v1.onnx" in msg


def test_no_resume_and_no_record_serve_the_command_line(folder: Path) -> None:
    v1 = str((folder / "model-v1.onnx").resolve())
    start = choose(_settings(folder), folder, _record(folder))  # no record yet
    assert (start.spec, start.resumed, start.why_not) == (v1, "", "")
    _record(folder).write(_note(folder, 2))
    start = choose(_settings(folder, resume=False), folder, _record(folder))
    assert (start.spec, start.resumed, start.why_not) == (v1, "", "")


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "no model in it"),
    ('{"version": 2}', "no model in it"),
    ('{"model": 2, "version": 2}', "no model in it"),
    ('{"model": "../elsewhere/model-v2.onnx", "version": 2}', "outside the model folder"),
    ('{"model": "/etc/passwd", "version": 2}', "outside the model folder"),
    ('{"model": "model-v7.onnx", "version": 7}', "does not exist"),
    ('{"model": "model-v1.json", "version": 1}', "not an .onnx file"),
])
def test_a_record_that_cannot_be_resumed_falls_back_to_the_command_line(
        folder: Path, content: str, why: str) -> None:
    (folder.parent / "elsewhere").mkdir()
    shutil.copy(folder / "model-v2.onnx", folder.parent / "elsewhere")
    rec = _record(folder)
    rec.path.write_text(content)
    start = choose(_settings(folder), folder, rec)
    assert start.spec == str((folder / "model-v1.onnx").resolve()) and start.resumed == ""
    assert why in start.why_not and rec.path.name in start.why_not
    msg = start_message(start, _note(folder, 1), _settings(folder))
    assert msg.startswith("serving model-v1.onnx (version 1) on CPU; not resuming")


def test_a_changed_command_line_wins_over_the_record(folder: Path) -> None:
    old = _record(folder, started_with=str(folder / "model-v0.onnx"))
    old.write(_note(folder, 2))
    start = choose(_settings(folder), folder, _record(folder))
    assert start.spec == str((folder / "model-v1.onnx").resolve()) and start.resumed == ""
    assert "--model changed" in start.why_not and "model-v0.onnx" in start.why_not


def test_a_recorded_model_that_fails_its_checks_falls_back_to_the_command_line(
        folder: Path) -> None:
    _record(folder).write(_note(folder, 2))
    (folder / "model-v2.onnx").write_bytes(b"\x08\x07 half a model")  # its card says otherwise
    settings = _settings(folder, threads=1, streams=1)
    start = choose(settings, folder, _record(folder))
    assert start.resumed == "model-v2.onnx"
    served, start = load_first(start, lambda spec: prepare(spec, settings, folder))
    try:
        assert isinstance(served, Served) and served.info.version == 1
        assert start.resumed == ""
        assert start.why_not.startswith("not resuming model-v2.onnx: ") and \
            ("sha256" in start.why_not or "cannot load" in start.why_not)
    finally:
        served.close()


def test_without_a_model_to_fall_back_on_the_edge_starts_without_one(folder: Path) -> None:
    settings = EdgeSettings(prefix=PREFIX, model_dir=str(folder))
    rec = ServingRecord(folder, PREFIX, "")
    rec.write(_note(folder, 2))
    start = choose(settings, folder, rec)

    def load(spec: str) -> str | None:
        if spec:
            raise ModelError(f"{Path(spec).name}: broken")
        return None

    got, start = load_first(start, load)
    assert got is None and start.spec == "" and "broken" in start.why_not


def test_an_unwritable_folder_warns_once_and_serving_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    rec = ServingRecord(blocked, PREFIX, "")
    with caplog.at_level(logging.WARNING):
        assert not rec.write(_note(tmp_path, 1))
        assert not rec.write(_note(tmp_path, 2))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot record" in warnings[0].getMessage()


def test_resume_is_on_by_default_and_no_resume_turns_it_off() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, EdgeSettings)
    assert resolve(EdgeSettings, "edge", parser.parse_args([]), {}).resume is True
    assert resolve(EdgeSettings, "edge", parser.parse_args(["--no-resume"]), {}).resume is False
