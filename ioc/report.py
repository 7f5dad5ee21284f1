"""The run report: ``report/index.html`` in a run's folder, figures beside it.

What a person wants to see after a run, drawn from what the run left behind
(nothing is recomputed): the network's stitched phase map (saved by the export
stage) beside the rPIE reconstruction and, for simulated scans, the truth; the
training and validation loss of every round so far; rPIE's error per epoch; the
edge's frame rate, latency and drops while the scan was taken (recorded by
:mod:`ptychoflow.ioc.edgerecorder`); the model lineage from the registry.

The IOC writes it when a run ends, in a worker thread (:class:`ReportWriter`),
and publishes its path in ``Workflow:Report_RBV``; ``ptychoflow report
RUN_FOLDER`` rebuilds one by hand. A figure that cannot be drawn becomes a line
saying why; the report is swapped into place whole.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import html
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ptychoflow.ioc.edgerecorder import SAMPLES_FILE, SampleLog
from ptychoflow.ioc.recovery import no_space
from ptychoflow.ioc.registry import Registry
from ptychoflow.ioc.reportsections import (
    ReportError,
    RunSections,
    acquisition_window,
    run_id_of,
    when,
)
from ptychoflow.pvnames import CONTROL

__all__ = ["HELP", "ReportError", "ReportWriter", "acquisition_window", "build_report",
           "register", "run", "run_id_of"]

HELP = "rebuild a run's report (RUN_FOLDER/report/index.html) from its files and the registry"
REPORT_DIR = "report"
INDEX = "index.html"
log = logging.getLogger(__name__)

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #eee;
text-align:left}tr.this{font-weight:bold;background:#eef7ee}img{max-width:100%}
figcaption{color:#555;font-size:.9em;max-width:60em}.missing{color:#a60}
.foot{color:#888;font-size:.85em;margin-top:2em}"""

SECTIONS = (("phase", "Phase maps", "phase.png"),
            ("training", "Training (all rounds so far)", "training.png"),
            ("rpie", "Iterative reconstruction", "rpie.png"),
            ("edge", "Edge during the scan", "edge.png"))


def build_report(run_dir: Path, registry: Registry, samples: SampleLog | None) -> Path:
    """Write ``run_dir/report/`` (figures and ``index.html``) whole; returns the index."""
    rep = RunSections(run_dir, registry, samples)
    tmp = run_dir / f".{REPORT_DIR}-{os.getpid()}-{threading.get_ident()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        body = [f"<h1>ptychoflow run {rep.id}: {html.escape(rep.run['state'])}</h1>",
                rep.header()]
        for method, title, png in SECTIONS:
            body.append(f"<h2>{html.escape(title)}</h2>")
            try:
                name, caption = getattr(rep, method)(tmp / png)
                body.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(title)}'>"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            except LookupError as exc:
                body.append(f"<p class='missing'>{html.escape(str(exc))}</p>")
            except Exception as exc:  # one figure that fails must not lose the others
                if no_space(exc, run_dir):
                    raise  # ... but on a full disk none will be written
                log.warning("run %d report: %s failed", rep.id, method, exc_info=True)
                body.append(f"<p class='missing'>Could not draw this: "
                            f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>")
        body += ["<h2>Model lineage</h2>", rep.lineage(),
                 f"<p class='foot'>Written {when(time.time())}; "
                 f"rebuild with <code>ptychoflow report {html.escape(str(run_dir))}</code>.</p>"]
        page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                f"<title>ptychoflow run {rep.id}</title><style>{CSS}</style></head><body>"
                + "\n".join(body) + "</body></html>\n")
        (tmp / INDEX).write_text(page, encoding="utf-8")
        final = run_dir / REPORT_DIR
        old = run_dir / f".{REPORT_DIR}-old-{os.getpid()}-{threading.get_ident()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final / INDEX
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Sink(Protocol):
    def post(self, values: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


class ReportWriter:
    """Writes run reports one at a time in a worker thread; never fails a run."""

    def __init__(self, registry: Registry, sink: _Sink, samples: SampleLog | None,
                 flush: Callable[[], None] | None = None) -> None:
        self.registry = registry
        self.sink = sink
        self.samples = samples
        self.flush = flush
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="run-report")
        self._pending: set[cf.Future[Path | None]] = set()

    def submit(self, run_id: int, run_dir: Path) -> cf.Future[Path | None] | None:
        """Report on a run that just ended (nothing if it left no folder, or after close)."""
        try:
            fut = self._pool.submit(self._write, run_id, run_dir)
        except RuntimeError:  # closed: the IOC is stopping
            log.warning("run %d ended after the IOC stopped writing reports", run_id)
            return None
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    def _write(self, run_id: int, run_dir: Path) -> Path | None:
        if not run_dir.is_dir():
            return None  # ended before any stage: nothing to show
        try:
            if self.flush is not None:
                self.flush()
            index = build_report(run_dir, self.registry, self.samples)
        except Exception as exc:
            full = no_space(exc, run_dir)
            if full:
                log.warning("report of run %d not written: %s", run_id, full)
                self.sink.message(f"Report of run {run_id} not written: {full}, then rebuild "
                                  f"it with: ptychoflow report {run_dir}")
                return None
            log.exception("report of run %d failed", run_id)
            self.sink.message(f"Report of run {run_id} failed: {type(exc).__name__}: {exc}")
            return None
        log.info("run %d report: %s", run_id, index)
        self.sink.post({CONTROL.workflow_report.suffix: str(index)})
        return index

    def close(self, timeout: float = 10.0) -> None:
        """Let the reports asked for finish (for up to ``timeout`` s); drop the rest."""
        cf.wait(list(self._pending), timeout)  # e.g. the report of a run aborted at shutdown
        self._pool.shutdown(wait=False, cancel_futures=True)


def register(parser: argparse.ArgumentParser) -> None:
    """``ptychoflow report RUN_FOLDER``."""
    parser.add_argument("run_folder", type=Path, help="the run's folder, "
                        "<work_root>/runs/run-NNNNN")
    parser.add_argument("--registry", type=Path, default=None,
                        help="registry database (default: <work_root>/registry.sqlite)")
    parser.add_argument("--edge-samples", type=Path, default=None,
                        help=f"edge samples the IOC recorded (default: <work_root>/"
                             f"{SAMPLES_FILE})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Rebuild the report and print the path of its index.html."""
    import sys

    run_dir = Path(args.run_folder).expanduser().resolve()
    db = Path(args.registry or run_dir.parent.parent / "registry.sqlite")
    samples = SampleLog(Path(args.edge_samples or run_dir.parent.parent / SAMPLES_FILE))
    try:
        run_id_of(run_dir)
        if not run_dir.is_dir():
            raise ReportError(f"{run_dir} does not exist")
        if not db.is_file():
            raise ReportError(f"no registry at {db}; pass --registry "
                              "<work_root>/registry.sqlite")
        registry = Registry(db)
        try:
            index = build_report(run_dir, registry, samples)
        finally:
            registry.close()
    except ReportError as exc:
        print(f"ptychoflow report: {exc}", file=sys.stderr)
        return 2
    print(index)
    return 0
