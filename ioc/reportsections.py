"""The sections of a run report: each gathers what the run left and draws one figure.

:class:`RunSections` reads the registry once; each section method writes its PNG and
returns the caption, or raises :class:`LookupError` with the reason the section is empty
(the report then says so in its place). Nothing here recomputes a result.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from ptychoflow.ioc.edgerecorder import SAMPLED, Sample, SampleLog
from ptychoflow.ioc.registry import Registry
from ptychoflow.pvnames import EDGE, PVSpec

MAX_WINDOW_S = 6 * 3600.0  # the longest acquisition window looked at without a previous scan
EDGE_STATUS_S = 0.5  # the edge publishes its speed and counts (when changed) this often


class ReportError(RuntimeError):
    """A report that cannot be written at all (no such run, no registry)."""


def run_id_of(run_dir: Path) -> int:
    """The run id in a run folder's name (``run-00012`` is run 12)."""
    m = re.fullmatch(r"run-(\d+)", run_dir.name)
    if not m:
        raise ReportError(f"{run_dir} is not a run folder (run-NNNNN under <work_root>/runs)")
    return int(m.group(1))


def when(t: float) -> str:
    """A Unix time as local date and time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _local(path: Any, run_dir: Path, stage: str) -> Path | None:
    """A stage output as this host sees it: the path itself, or the same name in the run's
    stage folder (a compute site without a shared folder names its own paths).
    """
    if not path:
        return None
    for p in (Path(str(path)), run_dir / stage / Path(str(path)).name):
        if p.is_file():
            return p
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class RunSections:
    """Everything one report needs, gathered once."""

    def __init__(self, run_dir: Path, registry: Registry, samples: SampleLog | None) -> None:
        self.dir = run_dir
        self.id = run_id_of(run_dir)
        run = registry.run(self.id)
        if run is None:
            raise ReportError(f"run {self.id} is not in the registry {registry.path}")
        self.run = run
        self.results: dict[str, Any] = run["results"]
        self.params: dict[str, Any] = run["params"]
        self.runs = [r for r in registry.runs() if r["id"] <= self.id]
        self.models = [m for m in registry.models()
                       if m.get("run_id") is None or m["run_id"] <= self.id]
        self.deployments = [d for d in registry.deployments() if d["time"] <= run["updated"] + 1]
        self.samples = samples

    # -- the scan's files -------------------------------------------------------------
    def scan_path(self) -> Path | None:
        """The scan file: where it was taken, else the transferred copy."""
        p = Path(self.run["scan"])
        return p if p.is_file() else _local(self.results.get("scan_path"), self.dir, "transfer")

    def reconstruction(self) -> Any:
        from ptychoflow.remote.recon import read_reconstruction

        p = _local(self.results.get("reconstruction"), self.dir, "reconstruct")
        if p is None:
            raise LookupError("no reconstruction file (the reconstruct stage did not finish)")
        try:
            return read_reconstruction(p)
        except (RuntimeError, OSError, ValueError) as exc:  # not a reconstruction of ours
            raise LookupError(f"no reconstruction to show: {exc}") from exc

    # -- sections ---------------------------------------------------------------------
    def phase(self, out: Path) -> tuple[str, str]:
        """Network, rPIE and truth phase maps on one scale; returns (png, caption)."""
        import numpy as np

        from ptychoflow.ioc.reportfigs import PhasePanel, align, centred_extent, phase_figure
        from ptychoflow.remote.phasemap import load_phase_map
        from ptychoflow.scanfile import read_scan

        notes: list[str] = []
        panels: dict[str, PhasePanel] = {}
        version = self.results.get("version")
        net_file = _local(self.results.get("network_phase"), self.dir, "export")
        if net_file is not None:
            net = load_phase_map(net_file)
            panels["network"] = PhasePanel(
                f"network (PtychoNN v{version}), {net.pixel_size_m * 1e9:.0f} nm px",
                net.phase.astype(float), net.pixel_size_m, net.extent_m())
        else:
            notes.append("no network map (the export stage saved none)")
        try:
            rec = self.reconstruction()
        except LookupError as exc:
            notes.append(str(exc))
        else:
            px = rec.pixel_size_m
            panels["rpie"] = PhasePanel(
                f"{rec.settings.get('algorithm', 'rPIE')} ({len(rec.errors)} epochs), "
                f"{px * 1e9:.0f} nm px", np.angle(rec.object), px,
                centred_extent(rec.object.shape, px))
        scan_file = self.scan_path()
        scan = read_scan(scan_file, frames=False) if scan_file else None
        if scan is not None and scan.truth is not None:
            px = scan.truth_pixel_size_m or scan.object_pixel_size_m
            panels["truth"] = PhasePanel(f"truth (simulated), {px * 1e9:.0f} nm px",
                                         np.angle(scan.truth), px,
                                         centred_extent(scan.truth.shape, px))
        if not panels:
            raise LookupError("; ".join(notes) or "nothing to show")
        if "network" in panels:
            view = panels["network"].extent_m
        elif scan is not None:
            half = np.array(scan.frame_shape) * scan.object_pixel_size_m / 2
            (y0, x0), (y1, x1) = scan.positions.min(0) - half, scan.positions.max(0) + half
            view = (x0, x1, y1, y0)
        else:
            view = next(iter(panels.values())).extent_m
        ref_name = next(k for k in ("truth", "rpie", "network") if k in panels)
        ref = panels[ref_name]
        shown = [p if k == ref_name else align(p, ref) for k, p in panels.items()]
        phase_figure(out, shown, view)
        names = {"truth": "the truth", "rpie": "the reconstruction", "network": "the network"}
        listed = [names[k] for k in panels]
        listed = [", ".join(listed[:-1]) + " and " + listed[-1]] if len(listed) > 1 else listed
        where = "the network map's field of view" if "network" in panels else "the scanned area"
        caption = (f"Phase of {listed[0]} over {where}, "
                   f"on one colour scale; each shifted by the constant that best "
                   f"matches {names[ref_name]} (ptychography fixes phase only up to a "
                   "constant).")
        q = self.results.get("quality")
        if isinstance(q, dict) and _num(q.get("ssim")) is not None:
            caption += f" SSIM of the network map against the {q.get('reference', 'rPIE')}: " \
                       f"{q['ssim']:.3f}"
            if _num(q.get("truth_ssim")) is not None:
                caption += f", against the truth: {q['truth_ssim']:.3f}"
            caption += "."
        if notes:
            caption += " Not shown: " + "; ".join(notes) + "."
        return out.name, caption

    def training(self, out: Path) -> tuple[str, str]:
        """Loss per epoch of every round of this run's training set so far."""
        from ptychoflow.ioc.reportfigs import Round, training_figure

        lineage = self.params.get("train_dir")
        rounds = [Round(f"run {r['id']}", list(r["results"]["history"]), r["id"] == self.id)
                  for r in self.runs
                  if isinstance(r["results"].get("history"), list) and r["results"]["history"]
                  and r["params"].get("train_dir") == lineage]
        if not rounds:
            raise LookupError("no training history (the train stage recorded no per-epoch "
                              "history)")
        training_figure(out, rounds)
        best = _num(self.results.get("best_val_loss"))
        tail = f" This run's best validation loss: {best:.4g}." if best is not None else ""
        mine = ("this run's round is shaded" if any(r.this_run for r in rounds)
                else "this run trained no round")
        return out.name, (f"Training and validation loss per epoch over {len(rounds)} "
                          "round(s) of continuous training, one after another (dashed lines "
                          f"separate rounds; {mine}).{tail}")

    def rpie(self, out: Path) -> tuple[str, str]:
        """The iterative reconstruction's error per epoch."""
        from ptychoflow.ioc.reportfigs import error_figure

        rec = self.reconstruction()
        if not rec.errors:
            raise LookupError("the reconstruction file holds no error per epoch")
        algorithm = rec.settings.get("algorithm", "rPIE")
        error_figure(out, rec.errors, f"{algorithm} data error per epoch")
        return out.name, (f"{algorithm} data error per epoch: {rec.errors[0]:.4g} at epoch 1, "
                          f"{rec.errors[-1]:.4g} after {len(rec.errors)} epochs "
                          f"({rec.seconds:.1f} s).")

    def edge(self, out: Path) -> tuple[str, str]:
        """The edge's speed PVs over the scan's acquisition window."""
        import numpy as np

        from ptychoflow.ioc.reportfigs import Series, edge_figure

        if self.samples is None:
            raise LookupError("No edge: this IOC has no edge_prefix, so it recorded no frame "
                              "rate, latency or drops.")
        if not self.samples.exists():
            raise LookupError(f"No edge samples recorded: {self.samples.path} does not exist "
                              "(the IOC records them only while edge_prefix is set)")
        completed, end_rule = self.completion(self.run)
        end = completed + 2 * EDGE_STATUS_S  # the counts of the scan's last frames come later
        previous = [t for r in self.runs if r["id"] < self.id
                    and (t := self.completion(r)[0]) < completed]
        prev_end = max(previous) if previous else None
        by: dict[str, list[Sample]] = {spec.suffix: [] for spec in SAMPLED}
        for s in self.samples.read(end=end):
            by.setdefault(s.suffix, []).append(s)
        start, rule = acquisition_window(by[EDGE.processed.suffix], end, prev_end)
        if not any(math.isfinite(s.value) and s.t >= start - MAX_WINDOW_S
                   for v in by.values() for s in v):
            raise LookupError(f"No edge samples before {when(end)}: the IOC had no "
                              "connection to the edge's PVs during this scan")

        def series(spec: PVSpec, relative: bool = False) -> Series:
            """Seconds from the start and values; the value the PV held at the start first."""
            suffix = spec.suffix
            held = [s for s in by[suffix] if s.t <= start and math.isfinite(s.value)][-1:]
            pts = [Sample(start, suffix, held[0].value)] if held else []
            pts += [s for s in by[suffix] if s.t > start]
            if pts:  # it held its last value to the window's end
                pts.append(Sample(end, suffix, pts[-1].value))
            t = np.array([s.t - start for s in pts])
            v = np.array([s.value for s in pts])
            if relative and np.isfinite(v).any():
                v = v - (held[0].value if held else np.nanmin(v))
            return Series(t, v)

        rate, lat = series(EDGE.frame_rate), series(EDGE.latency)
        done, dropped = series(EDGE.processed, True), series(EDGE.dropped, True)
        edge_figure(out, rate, lat, dropped, done, completed - start)

        def last(s: Series) -> int:
            finite = s.v[np.isfinite(s.v)]
            return int(finite[-1]) if finite.size else 0

        busy = rate.v[np.isfinite(rate.v) & (rate.v > 0)]
        speed = (f", median {np.median(busy):.0f} frames/s while busy" if busy.size else "")
        lats = lat.v[np.isfinite(lat.v) & (lat.v > 0)]
        speed += f", median latency {np.median(lats):.1f} ms" if lats.size else ""
        pvs = (EDGE.frame_rate, EDGE.latency, EDGE.processed, EDGE.dropped)
        return out.name, (f"The edge's {', '.join(s.suffix for s in pvs[:3])} and "
                          f"{pvs[3].suffix} as the IOC recorded them, "
                          f"from {rule} ({when(start)}) to {end_rule} "
                          f"({when(completed)}, and the edge's status up to 1 s later): "
                          f"{last(done)} frames processed, {last(dropped)} dropped{speed}.")

    @staticmethod
    def completion(run: dict[str, Any]) -> tuple[float, str]:
        """When a run's scan was complete: its file's time, else the run's start."""
        try:
            return os.stat(run["scan"]).st_mtime, "the scan file's completion"
        except OSError:
            return float(run["created"]), "the run's start (the scan file is gone)"

    def lineage(self) -> str:
        """The registered models so far as an HTML table."""
        if not self.models:
            return "<p class='missing'>No model registered yet.</p>"
        deployed = {d["version"] for d in self.deployments}
        serving = self.deployments[-1]["version"] if self.deployments else None
        rows = []
        for m in self.models:
            metrics, prov = m.get("metrics") or {}, m.get("provenance") or {}
            n = (prov.get("params") or {}).get("scans_in_set")
            scan = Path(str(prov.get("scan", ""))).name
            scans = f"{n} (latest {scan})" if isinstance(n, int) else scan or "?"
            loss = _num(metrics.get("best_val_loss"))
            q = metrics.get("quality")
            ssim = _num(q.get("ssim")) if isinstance(q, dict) else _num(q)
            state = ("serving" if m["version"] == serving
                     else "was deployed" if m["version"] in deployed else "no")
            cls = " class='this'" if m.get("run_id") == self.id else ""
            cells = [f"v{m['version']}", str(m.get("run_id") or ""), scans,
                     f"{loss:.4g}" if loss is not None else "–",
                     f"{ssim:.3f}" if ssim is not None else "–", state]
            rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                        + "</tr>")
        head = "".join(f"<th>{h}</th>" for h in ("model", "run", "scans trained on",
                                                 "validation loss", "quality (SSIM)",
                                                 "deployed"))
        return f"<table><tr>{head}</tr>{''.join(rows)}</table>"

    def header(self) -> str:
        r, p = self.run, self.params
        events = r.get("events") or []
        ended = events[-1]["time"] if events else r["updated"]
        facts = [("state", r["state"]), ("message", r["message"]), ("scan", r["scan"]),
                 ("started", when(r["created"])),
                 ("ended", f"{when(ended)} ({ended - r['created']:.0f} s)"),
                 ("back ends", f"transfer {p.get('transfer_backend', '?')}, compute "
                               f"{p.get('compute_backend', '?')}"),
                 ("settings", f"{p.get('algorithm', '?')} {p.get('recon_epochs', '?')} epochs; "
                              f"training {p.get('train_epochs', '?')} epochs, validation "
                              f"fraction {p.get('val_fraction', '?')}")]
        q = self.results.get("quality")
        q = q if isinstance(q, dict) else {}
        if self.results.get("version"):
            ssim = _num(q.get("ssim"))
            facts.append(("model", f"v{self.results['version']}" + (
                f", SSIM {ssim:.3f} against the {q.get('reference', 'reconstruction')}"
                if ssim is not None else "")))
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in facts)
        return f"<table class='facts'>{rows}</table>"


def acquisition_window(processed: list[Sample], end: float,
                       previous_end: float | None) -> tuple[float, str]:
    """Where the scan's acquisition started, and the rule that chose it (for the caption).

    The edge publishes its counts when they change, at most every ``EDGE_STATUS_S``; so
    frames started at most that long before the first ``Edge:Processed_RBV`` update that
    rose after the previous scan's completion. When the count was rising already as that
    scan completed (scans back to back), the window starts at its completion.
    """
    lower = previous_end if previous_end is not None else end - MAX_WINDOW_S
    pts = [s for s in processed if s.t <= end and math.isfinite(s.value)]
    before = [s for s in pts if s.t <= lower]
    seq = before[-1:] + [s for s in pts if s.t > lower]
    rise = next((i for i in range(1, len(seq)) if seq[i].value > seq[i - 1].value), None)
    if rise is None:
        if previous_end is not None:
            return previous_end, "the previous scan's completion (no frames processed since)"
        first = next((s.t for s in pts if s.t > lower), None)
        if first is None:
            return end - 60.0, "a minute before the scan's completion (no samples)"
        return first, "the first sample recorded (no frames processed since)"
    t = seq[rise].t
    if previous_end is not None and before and t - previous_end <= EDGE_STATUS_S:
        return previous_end, "the previous scan's completion (frames were flowing already)"
    start = max(seq[rise - 1].t, t - EDGE_STATUS_S, lower)
    return start, f"when {EDGE.processed.suffix} started rising"
