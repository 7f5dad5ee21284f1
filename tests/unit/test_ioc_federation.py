"""Back ends and rules of the federated workflow that need no server: transfer, channel,
quality gate, deployment decision, Parsl configuration."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from ptychoflow.config import ConfigError
from ptychoflow.ioc.compute import COMPUTES, BackendNotConfigured
from ptychoflow.ioc.compute.parsl_htex import ParslCompute, ParslSettings
from ptychoflow.ioc.deploy import beats
from ptychoflow.ioc.qualitygate import QualityGate
from ptychoflow.ioc.settings import IocSettings
from ptychoflow.ioc.stagetable import STAGES
from ptychoflow.ioc.transfer import TRANSFERS, TransferError
from ptychoflow.ioc.transfer.local import LocalTransfer, copy_verified
from ptychoflow.stages import Cancelled, ChannelTail, Reporter, file_reporter, run_stage


class Events:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put(self, item: dict[str, Any]) -> None:
        self.items.append(item)


def reporter(cancel: threading.Event | None = None) -> tuple[Reporter, Events]:
    ev = Events()
    return Reporter("transfer", ev, cancel or threading.Event()), ev


def test_registries_offer_exactly_the_pv_choices():
    from ptychoflow.pvnames import COMPUTE_BACKENDS, TRANSFER_BACKENDS

    assert tuple(COMPUTES) == COMPUTE_BACKENDS and tuple(TRANSFERS) == TRANSFER_BACKENDS
    assert [s.name for s in STAGES] == ["transfer", "reconstruct", "train", "export"]
    assert [s.state for s in STAGES] == ["Transferring", "Reconstructing", "Training",
                                        "Deploying"]


def test_local_transfer_copies_verified_atomically_and_skips_identical(tmp_path: Path):
    src = tmp_path / "data" / "scan.h5"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 << 20))
    t = LocalTransfer(IocSettings(work_root=str(tmp_path / "work")), None)
    rep, ev = reporter()
    moved = t.scan_to_compute(src, "run-00001", rep)
    dest = tmp_path / "work" / "runs" / "run-00001" / "transfer" / "scan.h5"
    assert moved.path == str(dest) and dest.read_bytes() == src.read_bytes()
    assert moved.sha256 == hashlib.sha256(src.read_bytes()).hexdigest() and not moved.skipped
    assert ev.items[-1]["fraction"] == 1.0 and ev.items[-1]["rate_mb_s"] > 0
    assert sorted(p.name for p in dest.parent.iterdir()) == ["scan.h5"]  # no .part left
    again = t.scan_to_compute(src, "run-00001", rep)
    assert again.skipped and again.rate_mb_s == 0.0


def test_local_transfer_refuses_missing_and_unfinished_files(tmp_path: Path):
    rep, _ = reporter()
    with pytest.raises(TransferError, match="no such file"):
        copy_verified(tmp_path / "nope.h5", tmp_path / "w" / "nope.h5", rep)
    part = tmp_path / "s.h5.part"
    part.write_bytes(b"x")
    with pytest.raises(TransferError, match="still being written"):
        copy_verified(part, tmp_path / "w" / "s.h5", rep)
    assert not (tmp_path / "w").exists()


def test_a_failing_copy_is_retried_then_fails_naming_the_folder(tmp_path: Path, monkeypatch):
    import ptychoflow.ioc.transfer.local as local

    src = tmp_path / "scan.h5"
    src.write_bytes(b"x" * 1000)
    calls: list[int] = []
    real = local._copy_once

    def flaky(*a: Any) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(28, "No space left on device")
        real(*a)

    monkeypatch.setattr(local, "_copy_once", flaky)
    rep, ev = reporter()
    moved = copy_verified(src, tmp_path / "w" / "scan.h5", rep, retries=3, backoff_s=0.01)
    assert len(calls) == 3 and Path(moved.path).read_bytes() == src.read_bytes()
    assert sum("retrying" in str(i.get("message")) for i in ev.items) == 2
    calls.clear()
    monkeypatch.setattr(local, "_copy_once", lambda *a: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    with pytest.raises(TransferError, match=r"to .*w2 failed after 2 attempt.*No space"):
        copy_verified(src, tmp_path / "w2" / "scan.h5", rep, retries=1, backoff_s=0.01)
    assert not (tmp_path / "w2" / "scan.h5").exists()


def test_an_aborted_copy_leaves_nothing_at_the_destination(tmp_path: Path):
    src = tmp_path / "scan.h5"
    src.write_bytes(os.urandom(20 << 20))
    cancel = threading.Event()
    ev = Events()

    class CancelAfterFirstBlock(Events):
        def put(self, item: dict[str, Any]) -> None:
            ev.put(item)
            if item.get("fraction"):
                cancel.set()

    rep = Reporter("transfer", CancelAfterFirstBlock(), cancel)
    with pytest.raises(Cancelled):
        copy_verified(src, tmp_path / "w" / "scan.h5", rep)
    assert list((tmp_path / "w").iterdir()) == []
    assert src.stat().st_size == 20 << 20  # the source is untouched


def test_file_channel_carries_progress_and_cancel(tmp_path: Path):
    rep = file_reporter(tmp_path / ".channel", "reconstruct")
    tail = ChannelTail(tmp_path / ".channel" / "reconstruct.progress.jsonl")
    assert tail.read() == []
    rep(0.5, "half", epoch=5)
    rep(1.0, epoch=10)
    items = tail.read()
    assert [(i["fraction"], i["epoch"]) for i in items] == [(0.5, 5), (1.0, 10)]
    assert tail.read() == []
    rep.cancel.set()  # type: ignore[union-attr]
    with pytest.raises(Cancelled):
        rep(0.6)


def _stage(scan_path: str, workdir: str, params: dict[str, Any],
           progress: Reporter | None = None) -> dict[str, Any]:
    assert progress is not None
    progress(1.0, epoch=1)
    return {"ok": scan_path}


def test_run_stage_announces_its_worker_and_refuses_a_cancelled_stage(tmp_path: Path):
    rep = file_reporter(tmp_path, "reconstruct")
    assert run_stage(_stage, "s.h5", str(tmp_path), {}, rep) == {"ok": "s.h5"}
    first, second = ChannelTail(tmp_path / "reconstruct.progress.jsonl").read()
    assert first["pid"] == os.getpid() and first["host"] and second["epoch"] == 1
    rep.cancel.set()  # type: ignore[union-attr]
    with pytest.raises(Cancelled):
        run_stage(_stage, "s.h5", str(tmp_path), {}, rep)


def test_quality_gate_closes_after_consecutive_runs_and_reopens():
    gate = QualityGate(0.0, runs=2)
    assert not gate.record(0.99) and not gate.closed  # no target: no gate
    gate.set_target(0.8)
    assert [gate.record(q) for q in (0.9, 0.7, 0.85, 0.9)] == [False, False, False, True]
    assert gate.closed and "2 consecutive runs" in gate.note()
    assert not gate.set_target(0.9)  # raising the target keeps it closed
    assert gate.closed
    assert gate.set_target(0.5) and not gate.closed  # lowering it reopens
    gate.record(0.6)
    gate.record(0.6)
    assert gate.closed
    gate.reopen()
    assert not gate.closed and gate.streak == 0


def test_a_model_is_deployed_only_if_it_beats_the_deployed_one():
    def model(v: int, loss: float, ssim: float) -> dict[str, Any]:
        return {"version": v, "metrics": {"best_val_loss": loss, "quality": {"ssim": ssim}}}

    assert beats(model(1, 0.5, 0.5), None) == (True, "no model deployed yet")
    assert beats(model(2, 0.4, 0.6), model(1, 0.5, 0.5))[0]
    ok, why = beats(model(3, 0.6, 0.9), model(2, 0.4, 0.6))
    assert not ok and why == "validation loss 0.6 is worse than deployed v2's 0.4"
    ok, why = beats(model(3, 0.3, 0.5), model(2, 0.4, 0.6))
    assert not ok and why == "quality 0.500 is worse than deployed v2's 0.600"


def test_parsl_refuses_missing_or_wrong_configuration_at_start():
    s = IocSettings()
    with pytest.raises(BackendNotConfigured, match=r"Parsl is not configured.*\[compute.parsl\]"):
        ParslCompute(s, None).check()
    for table, expect in [({"provider": "kubernetes"}, "provider 'kubernetes' is unknown"),
                          ({"walltime": "90 minutes"}, "walltime '90 minutes' is not HH:MM:SS"),
                          ({"partitoin": "gpu"}, "unknown key.*partitoin"),
                          ({"provider": "slurm"}, "sbatch is not on this host")]:
        with pytest.raises(BackendNotConfigured, match=expect):
            ParslCompute(s, table).check()
    assert ParslSettings.from_table({"walltime": "02:30:00"}).walltime_s == 9000
    with pytest.raises(ConfigError):
        ParslSettings.from_table({"workers": 0})


def test_site_differences_that_break_unpickling_refuse_the_back_end():
    from ptychoflow.ioc.sitecheck import differences, refusal
    from ptychoflow.remote.sitecheck import site_report

    here = site_report()
    assert here["packages"]["ptychoflow"] and "cpu" in here["devices"]
    assert differences(here, here) == [] and refusal("Parsl", []) is None
    there = {**here, "python": "3.12.1",
             "packages": {**here["packages"], "ptychoflow": "0.0.9", "onnx": None}}
    diffs = differences(here, there)
    assert [(d.what, d.breaking) for d in diffs] == [
        ("python", True), ("ptychoflow", True), ("onnx", False)]
    msg = refusal("Parsl", diffs)
    assert msg is not None and "python: here" in msg and "there 0.0.9" in msg
    assert "ptychoflow remote check --backend parsl" in msg


@pytest.mark.parametrize("provider", ["slurm", "pbspro"])
def test_a_batch_provider_becomes_a_parsl_config_with_its_allocation(provider, tmp_path: Path):
    from ptychoflow.ioc.compute.parsl_htex import make_config

    cfg = ParslSettings.from_table({
        "provider": provider, "account": "ptycho-ai", "partition": "gpu",
        "walltime": "02:00:00", "workers": 4, "gpus_per_worker": 1, "max_blocks": 3,
        "worker_init": "module load conda"})
    (htex,) = make_config(cfg, tmp_path).executors
    p = htex.provider
    assert type(p).__name__ == {"slurm": "SlurmProvider", "pbspro": "PBSProProvider"}[provider]
    assert p.walltime == "02:00:00" and p.account == "ptycho-ai" and p.max_blocks == 3
    assert (p.partition if provider == "slurm" else p.queue) == "gpu"
    assert "module load conda" in p.worker_init and "PTYCHOFLOW_WALLTIME_S=7200" in p.worker_init
    assert htex.max_workers_per_node == 4 and len(htex.available_accelerators) == 4


def test_a_transfer_cut_part_way_leaves_no_partial_file_and_the_retry_verifies(
        tmp_path: Path, monkeypatch) -> None:
    """The source's reads fail after 3 MiB of 8 (a network mount dropping mid-copy): nothing
    partial appears at the destination, the source is untouched, the retry completes with a
    checksum that matches."""
    import builtins

    src = tmp_path / "scan.h5"
    payload = os.urandom(8 << 20)
    src.write_bytes(payload)
    dest = tmp_path / "w" / "scan.h5"
    real_open = builtins.open
    seen_partial: list[list[str]] = []

    class Cut:
        """A source file whose reads fail once 3 MiB have been read."""

        def __init__(self, fh: Any) -> None:
            self.fh, self.read_so_far = fh, 0

        def read(self, n: int = -1) -> bytes:
            if self.read_so_far >= 3 << 20:
                seen_partial.append(sorted(p.name for p in dest.parent.iterdir()))
                raise OSError(5, "Input/output error (connection to the mount lost)")
            block = self.fh.read(n)
            self.read_so_far += len(block)
            return block

        def __enter__(self) -> Cut:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.fh.close()

    cuts = [1]

    def opener(self: Path, mode: str = "r", *a: Any, **k: Any) -> Any:
        fh = real_open(self, mode, *a, **k)
        if self == src and mode == "rb" and cuts:
            cuts.pop()  # the first copy attempt only
            return Cut(fh)
        return fh

    # the source's checksum is read with open(); the copy reads through Path.open: cut that
    monkeypatch.setattr(Path, "open", opener)
    rep, ev = reporter()
    moved = copy_verified(src, dest, rep, retries=2, backoff_s=0.01)
    assert seen_partial and all(n.endswith(".part") and n.startswith(".") for n in
                                seen_partial[0])  # mid-copy: only the hidden .part
    assert sorted(p.name for p in dest.parent.iterdir()) == ["scan.h5"]  # no .part left
    assert dest.read_bytes() == payload and src.read_bytes() == payload
    assert moved.sha256 == hashlib.sha256(payload).hexdigest()
    assert sum("retrying" in str(i.get("message")) for i in ev.items) == 1
