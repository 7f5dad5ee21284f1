"""After a crash the next start undoes what was half-done; a full disk is said as such."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from ptychoflow.ioc.autosave import Autosave, AutosaveError
from ptychoflow.ioc.recovery import no_space, recover, run_dir
from ptychoflow.ioc.registry import Registry
from ptychoflow.pvnames import CONTROL


def test_recover_removes_the_interrupted_stage_and_every_part_and_keeps_finished_stages(
        tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    done = reg.new_run("/d/a.h5", {})
    reg.set_state(done, "Done")
    cut = reg.new_run("/d/b.h5", {})
    for state in ("Transferring", "Reconstructing", "Training"):
        reg.set_state(cut, state)
    for rid, stage, name in [(done, "train", "checkpoint.npy"), (cut, "transfer", "b.h5"),
                             (cut, "reconstruct", "recon.npy"), (cut, "train", "ck.npy.part")]:
        (run_dir(tmp_path, rid) / stage).mkdir(parents=True, exist_ok=True)
        (run_dir(tmp_path, rid) / stage / name).write_bytes(b"x")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model-v2.onnx.part").write_bytes(b"half")
    (tmp_path / "models" / "model-v1.onnx").write_bytes(b"whole")

    got = recover(Registry(tmp_path / "registry.sqlite"), tmp_path)

    assert got.runs == {cut: "Training"}
    assert not (run_dir(tmp_path, cut) / "train").exists()
    assert (run_dir(tmp_path, cut) / "reconstruct" / "recon.npy").is_file()  # finished: kept
    assert (run_dir(tmp_path, done) / "train" / "checkpoint.npy").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model-v1.onnx"]
    assert "run 2 in Training" in got.summary() and "model-v2.onnx.part" in got.summary()
    assert recover(Registry(tmp_path / "registry.sqlite"), tmp_path).runs == {}


def test_no_space_finds_a_full_disk_by_errno_or_by_text_and_nothing_else(tmp_path: Path):
    try:
        raise RuntimeError("copying a.h5 failed") from OSError(errno.ENOSPC, "No space left "
                                                                 "on device")
    except RuntimeError as exc:
        said = no_space(exc, tmp_path)
    assert said is not None and f"the disk holding {tmp_path} is full" in said
    assert "MB free" in said and "No space left on device" in said
    short = OSError("1048576 requested and 120816 written")  # numpy's tofile, no errno
    assert no_space(short, tmp_path) is not None
    assert no_space(OSError(errno.ENOENT, "No such file"), tmp_path) is None
    assert no_space(ValueError("bad scan"), tmp_path) is None


def test_an_autosave_that_cannot_write_keeps_the_last_file_whole(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    save = Autosave(tmp_path / "autosave.json")
    save.save(CONTROL.recon_epochs.suffix, 5)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(AutosaveError, match="applies now but could not be saved"):
        save.save(CONTROL.recon_epochs.suffix, 9)
    assert json.loads((tmp_path / "autosave.json").read_text())[CONTROL.recon_epochs.suffix] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["autosave.json"]
