"""The run report, built from a real run folder: two runs of the real remote stages on tiny
simulated scans (rPIE, two training rounds, ONNX export), a registry as the IOC keeps it,
and edge samples as the IOC records them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ptychi")
pytest.importorskip("matplotlib")

from ptychoflow.ioc import report, reportsections  # noqa: E402
from ptychoflow.ioc.edgerecorder import SAMPLES_FILE, Sample, SampleLog  # noqa: E402
from ptychoflow.ioc.registry import Registry  # noqa: E402
from ptychoflow.modelcard import ModelCard, sha256_file  # noqa: E402
from ptychoflow.remote import stages  # noqa: E402
from ptychoflow.remote.phasemap import load_phase_map  # noqa: E402
from ptychoflow.scanfile import write_scan  # noqa: E402
from ptychoflow.sim.physics import simulate_scan  # noqa: E402

pytestmark = pytest.mark.timeout(120)

BASE = {"recon_epochs": 6, "train_epochs": 3, "train_batch_size": 8, "device": "cpu",
        "seed": 0, "tensorrt": False, "algorithm": "rPIE", "val_fraction": 0.1,
        "transfer_backend": "Local", "compute_backend": "Local"}
FIGURES = ["phase.png", "training.png", "rpie.png", "edge.png"]
T0 = 1_800_000_000.0  # the first scan's completion (scan files get these times)
SCAN_S = 60.0  # each scan takes a minute; the next completes 100 s after the previous


def _run(reg: Registry, work: Path, scan: Path, deploy: bool) -> int:
    """One run as the orchestrator makes it: stage folders, merged results, the model."""
    params = {**BASE, "model_dir": str(work / "models"), "train_dir": str(work / "training")}
    run_id = reg.new_run(str(scan), params)
    run_dir = work / "runs" / f"run-{run_id:05d}"
    results: dict[str, Any] = {}
    p = {**params, "path": str(scan), "version": reg.latest_version() + 1}
    for name in ("reconstruct", "train", "export"):
        stage_dir = run_dir / name
        stage_dir.mkdir(parents=True)
        r = getattr(stages, name)(str(scan), str(stage_dir), p)
        results.update(r)
        p.update(r)
        reg.set_results(run_id, results)
    metrics = {"best_val_loss": p["best_val_loss"], "quality": p["quality"]}
    reg.add_model(p["version"], p["model"], sha256_file(p["model"]), metrics,
                  {"run_id": run_id, "scan": str(scan), "params": p}, run_id)
    if deploy:
        reg.mark_deployed(p["version"], "beats deployed")
    reg.set_state(run_id, "Done", f"Done: run {run_id}")
    return run_id


def _edge_samples(log: SampleLog) -> None:
    """As the edge publishes them (every 0.5 s, only what changed): idle, then scan 1
    (100 Hz, a drop every 20 s), idle, then scan 2."""
    samples: list[Sample] = []
    last: dict[str, float] = {}
    processed = dropped = 0
    for k in range(2 * 230):
        t = T0 - SCAN_S - 20 + k / 2
        busy = any(end - SCAN_S < t <= end for end in (T0, T0 + 100))
        rate = 100.0 if busy else 0.0
        processed += int(rate / 2)
        dropped += int(busy and k % 40 == 0)
        for pv, v in (("Edge:FrameRate_RBV", rate),
                      ("Edge:Latency_RBV", 4.0 + (k % 7) if busy else 0.0),
                      ("Edge:Processed_RBV", processed), ("Edge:Dropped_RBV", dropped)):
            if last.get(pv) != v:
                samples.append(Sample(t, pv, v))
                last[pv] = v
    log.append(samples)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A work root with two real runs (the second warm-starts from the first)."""
    work = tmp_path_factory.mktemp("work")
    reg = Registry(work / "registry.sqlite")
    ids = []
    for i, seed in enumerate((1, 2)):
        scan = write_scan(work / "data" / f"scan-{i + 1:03d}.h5",
                          simulate_scan(n_frames=60, size=64, step_m=4e-7, photons=1e6,
                                        probe_diameter_px=36, seed=seed))
        os.utime(scan, (T0 + 100 * i, T0 + 100 * i))
        ids.append(_run(reg, work, scan, deploy=i == 0))
    _edge_samples(SampleLog(work / SAMPLES_FILE))
    yield {"work": work, "registry": reg, "ids": ids}
    reg.close()


def _png_variance(path: Path) -> float:
    from matplotlib.image import imread

    return float(np.var(imread(str(path))[..., :3]))


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if k in ("src", "href") and v:
                self.refs.append(v)


def test_export_keeps_the_stitched_map_it_measured(run_folder: dict[str, Any]) -> None:
    reg = run_folder["registry"]
    results = reg.run(run_folder["ids"][1])["results"]
    path = Path(results["network_phase"])
    assert path.parent.name == "export" and path.name == "network-phase.npy"
    m = load_phase_map(path)
    assert m.pixel_size_m == pytest.approx(ModelCard.load(results["card"]).output_pixel_size_m)
    assert list(m.phase.shape) == results["quality"]["map_shape"]
    assert np.isfinite(m.phase).mean() > 0.5  # covered where the scan went, NaN elsewhere
    assert not list(path.parent.glob("*.part"))


def test_a_run_report_shows_every_figure_and_links_only_existing_files(
        run_folder: dict[str, Any]) -> None:
    run_dir = run_folder["work"] / "runs" / f"run-{run_folder['ids'][1]:05d}"
    index = report.build_report(run_dir, run_folder["registry"],
                                SampleLog(run_folder["work"] / SAMPLES_FILE))
    assert index == run_dir / "report" / "index.html"
    page = index.read_text()
    for name in FIGURES:
        png = index.parent / name
        assert png.is_file(), f"{name} missing:\n{page}"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _png_variance(png) > 0, f"{name} is blank"
    parser = _Refs()
    parser.feed(page)
    assert sorted(parser.refs) == sorted(FIGURES)
    assert all((index.parent / ref).is_file() for ref in parser.refs)
    assert "class='missing'" not in page  # every section drawn
    # the lineage: both models, the first deployed and serving, the second this run's
    rows = re.findall(r"<tr( class='this')?><td>v(\d)</td>", page)
    assert rows == [("", "1"), (" class='this'", "2")]
    assert "serving" in page and "2 (latest scan-002.h5)" in page
    # the edge window of scan 2: it starts after scan 1's completion, where frames started
    assert f"when Edge:Processed_RBV started rising ({reportsections.when(T0 + 40)})" in page
    assert "6000 frames processed" in page  # 60 s at 100 Hz, none of scan 1's
    assert sorted(p.name for p in run_dir.iterdir()) == ["export", "reconstruct", "report",
                                                        "train"]  # no temporary folder left


def test_without_an_edge_the_report_says_so(run_folder: dict[str, Any],
                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / f"run-{run_folder['ids'][0]:05d}"
    shutil.copytree(run_folder["work"] / "runs" / run_dir.name, run_dir)
    index = report.build_report(run_dir, run_folder["registry"], None)
    page = index.read_text()
    assert "No edge: this IOC has no edge_prefix" in page
    assert not (index.parent / "edge.png").exists()
    assert (index.parent / "phase.png").is_file()


def test_a_failed_run_reports_what_it_left(run_folder: dict[str, Any]) -> None:
    """Failed in training: its reconstruction is there, no network map, no round of its own."""
    work, reg = run_folder["work"], run_folder["registry"]
    first = reg.run(run_folder["ids"][0])
    run_id = reg.new_run(first["scan"], first["params"])
    run_dir = work / "runs" / f"run-{run_id:05d}"
    shutil.copytree(Path(first["results"]["reconstruction"]).parent, run_dir / "reconstruct")
    reg.set_results(run_id, {"reconstruction": str(
        run_dir / "reconstruct" / Path(first["results"]["reconstruction"]).name)})
    reg.set_state(run_id, "Failed", "Failed in Training: out of memory")
    page = report.build_report(run_dir, reg, None).read_text()
    assert "run 3: Failed" in page and "out of memory" in page
    assert "Not shown: no network map" in page and "over the scanned area" in page
    assert "over 2 round(s)" in page and "this run trained no round" in page  # the rounds so far
    assert {p.name for p in (run_dir / "report").iterdir()} == {"index.html", "phase.png",
                                                                "rpie.png", "training.png"}


class Sink:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.messages: list[str] = []

    def post(self, values: dict[str, Any]) -> None:
        self.posts.append(values)

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_the_writer_publishes_the_path_and_fails_softly(run_folder: dict[str, Any],
                                                        tmp_path: Path) -> None:
    sink = Sink()
    writer = report.ReportWriter(run_folder["registry"], sink, None)
    run_dir = run_folder["work"] / "runs" / f"run-{run_folder['ids'][0]:05d}"
    done = writer.submit(1, run_dir)
    assert done is not None and done.result(60) == run_dir / "report" / "index.html"
    assert sink.posts == [{"Workflow:Report_RBV": str(run_dir / "report" / "index.html")}]
    stray = tmp_path / "runs" / "run-00042"  # a folder the registry has no run for
    stray.mkdir(parents=True)
    for run_id in (42, 43):  # no run in the registry; no folder at all
        fut = writer.submit(run_id, tmp_path / "runs" / f"run-{run_id:05d}")
        assert fut is not None and fut.result(60) is None
    writer.close()
    assert writer.submit(1, run_dir) is None  # a run that ends while the IOC stops
    assert len(sink.posts) == 1  # Report_RBV keeps naming the last good report
    assert sink.messages == ["Report of run 42 failed: ReportError: run 42 is not in the "
                             f"registry {run_folder['registry'].path}"]
    assert not list(stray.iterdir())  # nothing half-written left behind


def test_report_command_rebuilds_a_report(run_folder: dict[str, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run_folder["work"] / "runs" / f"run-{run_folder['ids'][0]:05d}"
    shutil.rmtree(run_dir / "report", ignore_errors=True)
    parser = argparse.ArgumentParser()
    report.register(parser)
    args = parser.parse_args([str(run_dir)])
    assert args.func(args) == 0
    assert Path(capsys.readouterr().out.strip()) == run_dir / "report" / "index.html"
    assert "scan-001.h5" in (run_dir / "report" / "index.html").read_text()
    bad = parser.parse_args([str(run_folder["work"] / "runs" / "run-00099")])
    assert bad.func(bad) == 2
    assert "does not exist" in capsys.readouterr().err


def test_acquisition_window_rules() -> None:
    def series(*points: tuple[float, int]) -> list[Sample]:
        return [Sample(t, "Edge:Processed_RBV", v) for t, v in points]

    # idle after the previous scan, then frames: up to one status period before the rise
    assert report.acquisition_window(series((0, 5), (3, 9), (3.5, 14)), 10, 1.0) == (
        2.5, "when Edge:Processed_RBV started rising")
    # back to back: rising at once after the previous completion
    start, rule = report.acquisition_window(series((2.0, 5), (2.5, 9), (3.0, 14)), 10, 2.2)
    assert start == 2.2 and rule.startswith("the previous scan's completion (frames were")
    # nothing processed since the previous scan; no previous scan and no samples
    assert report.acquisition_window(series((0, 5)), 10, 1.0)[0] == 1.0
    assert report.acquisition_window(series((0, 5)), 10, None) == (
        0.0, "the first sample recorded (no frames processed since)")
    assert report.acquisition_window([], 100, None)[0] == 40.0


def test_edge_samples_roll_and_read_back(tmp_path: Path) -> None:
    log = SampleLog(tmp_path / SAMPLES_FILE, max_bytes=2000)
    for k in range(100):
        log.append([Sample(float(k), "Edge:Processed_RBV", float(k))])
    assert log.older.is_file() and log.path.stat().st_size < 2100  # bounded: two files
    kept = log.read()
    assert [s.t for s in kept] == list(range(100 - len(kept), 100))  # the newest, in order
    assert [s.t for s in log.read(95, 97)] == [95, 96, 97]
    with log.path.open("a") as fh:
        fh.write('{"t": 100, "pv": "Edge:Pro')  # a line torn by a crash is skipped
    assert log.read()[-1].t == 99


def test_recorder_queues_monitor_updates_and_marks_disconnects(tmp_path: Path) -> None:
    from ptychoflow.ioc.edgerecorder import SAMPLED, EdgeRecorder

    class Ctx:
        def __init__(self) -> None:
            self.callbacks: dict[str, Any] = {}

        def monitor(self, name: str, cb: Any, notify_disconnect: bool) -> Any:
            assert notify_disconnect
            self.callbacks[name] = cb
            return type("Sub", (), {"close": lambda self: None})()

        def close(self) -> None:
            pass

    ctx = Ctx()
    rec = EdgeRecorder("EDGE:", tmp_path / SAMPLES_FILE, flush_s=0.05, context=lambda: ctx)
    rec.start()
    assert sorted(ctx.callbacks) == sorted(s.name("EDGE:") for s in SAMPLED)
    ctx.callbacks["EDGE:Edge:Processed_RBV"](42)
    ctx.callbacks["EDGE:Edge:Latency_RBV"](RuntimeError("Disconnected"))
    rec.close()
    got = {(s.suffix, s.value if s.value == s.value else "gap") for s in rec.log.read()}
    assert got == {("Edge:Processed_RBV", 42.0), ("Edge:Latency_RBV", "gap")}


def test_screenshot_of_the_report(run_folder: dict[str, Any], tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium to take a screenshot with")
    run_dir = run_folder["work"] / "runs" / f"run-{run_folder['ids'][1]:05d}"
    index = report.build_report(run_dir, run_folder["registry"],
                                SampleLog(run_folder["work"] / SAMPLES_FILE))
    flags = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2400", index.as_uri()],
                   check=True, timeout=60, capture_output=True)
    assert shot.is_file() and _png_variance(shot) > 0
    # the browser itself says how many of the page's images failed to load
    probe = tmp_path / "probe.html"
    probe.write_text(
        f'<iframe id="r" src="{index.as_uri()}" width="1400" height="2400"></iframe><script>'
        'document.getElementById("r").onload = () => {'
        ' const imgs = [...document.getElementById("r").contentDocument.images];'
        ' document.body.dataset.result = imgs.length + " images, " +'
        ' imgs.filter(i => !i.complete || i.naturalWidth === 0).length + " broken"; };'
        '</script>')
    dom = subprocess.run([*flags, "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    figures = len(list(index.parent.glob("*.png")))
    assert f'data-result="{figures} images, 0 broken"' in dom, dom[-500:]
