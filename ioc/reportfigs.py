"""The run report's figures (matplotlib, Agg, one PNG each).

Figures are drawn with :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``, so they hold no global state and a report can be drawn in
a worker thread of the IOC while another thread does something else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
Extent = tuple[float, float, float, float]  # left, right, bottom, top (metres, origin upper)


@dataclass
class PhasePanel:
    """One phase image placed in scan coordinates."""

    title: str
    phase: np.ndarray  # radians, NaN where there is nothing
    pixel_size_m: float
    extent_m: Extent


def centred_extent(shape: tuple[int, ...], pixel_m: float) -> Extent:
    """Extent of an object whose pixel ``shape // 2`` is scan position (0, 0)."""
    h, w = shape[:2]
    r0, c0 = h // 2, w // 2
    return ((-c0 - 0.5) * pixel_m, (w - c0 - 0.5) * pixel_m, (h - r0 - 0.5) * pixel_m,
            (-r0 - 0.5) * pixel_m)


def crop(panel: PhasePanel, view: Extent) -> PhasePanel:
    """``panel`` cut to the pixels inside ``view`` (same pixel size)."""
    left, _, _, top = panel.extent_m
    p = panel.pixel_size_m
    h, w = panel.phase.shape
    c0 = max(0, int(math.floor((view[0] - left) / p)))
    c1 = min(w, int(math.ceil((view[1] - left) / p)))
    r0 = max(0, int(math.floor((view[3] - top) / p)))
    r1 = min(h, int(math.ceil((view[2] - top) / p)))
    if c1 <= c0 or r1 <= r0:
        return PhasePanel(panel.title, np.full((1, 1), np.nan), p, view)
    return PhasePanel(panel.title, panel.phase[r0:r1, c0:c1], p,
                      (left + c0 * p, left + c1 * p, top + r1 * p, top + r0 * p))


def _centres(panel: PhasePanel) -> tuple[np.ndarray, np.ndarray]:
    h, w = panel.phase.shape
    left, _, _, top = panel.extent_m
    p = panel.pixel_size_m
    ys = top + (np.arange(h) + 0.5) * p
    xs = left + (np.arange(w) + 0.5) * p
    return ys, xs


def align(panel: PhasePanel, reference: PhasePanel) -> PhasePanel:
    """``panel`` shifted by the constant phase that best matches ``reference`` where both
    have values (ptychography fixes the phase only up to a constant), wrapped about the
    reference's mean so both read on one scale.
    """
    ys, xs = _centres(panel)
    rleft, _, _, rtop = reference.extent_m
    rows = np.floor((ys - rtop) / reference.pixel_size_m).astype(int)
    cols = np.floor((xs - rleft) / reference.pixel_size_m).astype(int)
    rh, rw = reference.phase.shape
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    inside = (rr >= 0) & (rr < rh) & (cc >= 0) & (cc < rw)
    ref = np.full(panel.phase.shape, np.nan)
    ref[inside] = reference.phase[rr[inside], cc[inside]]
    both = np.isfinite(ref) & np.isfinite(panel.phase)
    if both.sum() < 16:
        return panel
    off = float(np.angle(np.mean(np.exp(1j * (ref[both] - panel.phase[both])))))
    centre = float(np.nanmean(reference.phase))
    shifted = centre + np.angle(np.exp(1j * (panel.phase + off - centre)))
    return PhasePanel(panel.title, shifted, panel.pixel_size_m, panel.extent_m)


def _nice_length(span: float) -> float:
    """A 1, 2 or 5 times a power of ten near a quarter of ``span``."""
    target = span / 4
    if not target > 0:
        return 1.0
    k = 10 ** math.floor(math.log10(target))
    return max((m * k for m in (1, 2, 5) if m * k <= target), default=k)


def _scale_bar(ax: Any, width_um: float) -> None:
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _nice_length(width_um)
    label = f"{length:g} µm" if length >= 1 else f"{length * 1000:g} nm"
    bar = AnchoredSizeBar(ax.transData, length, label, "lower right", pad=0.3, borderpad=0.5,
                          color="white", frameon=True, size_vertical=width_um / 150,
                          fontproperties=FontProperties(size=9))
    bar.patch.set_facecolor("black")
    bar.patch.set_alpha(0.45)
    bar.patch.set_edgecolor("none")
    ax.add_artist(bar)


def phase_figure(path: Path, panels: Sequence[PhasePanel], view: Extent) -> Path:
    """Phase maps side by side on one colour scale, in µm, each with a colour bar."""
    from matplotlib.figure import Figure

    shown = [crop(p, view) for p in panels]
    values = np.concatenate([p.phase[np.isfinite(p.phase)].ravel() for p in shown])
    lo, hi = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    fig = Figure(figsize=(4.2 * len(shown), 4.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    um = 1e6
    for ax, p in zip(axes, shown, strict=True):
        ext = tuple(v * um for v in p.extent_m)
        im = ax.imshow(np.ma.masked_invalid(p.phase), cmap="viridis", vmin=lo, vmax=hi,
                       extent=ext, origin="upper", interpolation="nearest")
        ax.set_xlim(view[0] * um, view[1] * um)
        ax.set_ylim(view[2] * um, view[3] * um)
        ax.set_facecolor("0.85")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(p.title, fontsize=10)
        _scale_bar(ax, (view[1] - view[0]) * um)
        fig.colorbar(im, ax=ax, shrink=0.85, label="phase (rad)")
    fig.savefig(path)
    return path


@dataclass
class Round:
    """One training round: its label and per-epoch losses."""

    label: str
    history: list[dict[str, float]]
    this_run: bool = False


def _log_if_wide(ax: Any, values: np.ndarray) -> None:
    """A log axis for values spanning more than a decade (all positive)."""
    v = values[np.isfinite(values)]
    if v.size and v.min() > 0 and v.max() / v.min() > 10:
        ax.set_yscale("log")


def training_figure(path: Path, rounds: Sequence[Round]) -> Path:
    """Training and validation loss per epoch, rounds one after another."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    start = 0
    every: list[float] = []
    for i, r in enumerate(rounds):
        epochs = start + np.arange(1, len(r.history) + 1)
        loss = np.array([float(h.get("loss", np.nan)) for h in r.history])
        val = np.array([float(h.get("val_loss", np.nan)) for h in r.history])
        every += [*loss, *val]
        ax.plot(epochs, loss, "-", color="C0", label="training" if i == 0 else None)
        ax.plot(epochs, val, "-", color="C1", label="validation" if i == 0 else None)
        if i:
            ax.axvline(start + 0.5, color="0.5", ls="--", lw=0.8)
        ax.annotate(r.label, (start + 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -3), textcoords="offset points", va="top", fontsize=8,
                    fontweight="bold" if r.this_run else "normal")
        if r.this_run:
            ax.axvspan(start + 0.5, start + len(r.history) + 0.5, color="C2", alpha=0.08)
        start += len(r.history)
    _log_if_wide(ax, np.array(every, dtype=float))
    ax.set_xlabel("epoch (all rounds, in order)")
    ax.set_ylabel("loss")
    ax.set_xlim(0.5, max(start, 1) + 0.5)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def error_figure(path: Path, errors: Sequence[float], title: str) -> Path:
    """The iterative solver's data error per epoch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    e = np.asarray(errors, dtype=float)
    ax.plot(np.arange(1, len(e) + 1), e, "o-", ms=3)
    _log_if_wide(ax, e)
    ax.set_xlabel("epoch")
    ax.set_ylabel("data error")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


@dataclass
class Series:
    """One recorded edge PV over the window: seconds from the window's start, values."""

    t: np.ndarray
    v: np.ndarray


def edge_figure(path: Path, rate: Series, latency: Series, dropped: Series,
                processed: Series, complete_s: float | None = None) -> Path:
    """Frame rate, latency and frames processed / dropped over the acquisition window."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].step(rate.t, rate.v, where="post", color="C0", marker=".", ms=3)
    axes[0].set_ylabel("frame rate (Hz)")
    axes[1].step(latency.t, latency.v, where="post", color="C1", marker=".", ms=3)
    axes[1].set_ylabel("latency (ms)")
    axes[2].step(processed.t, processed.v, where="post", color="C2", label="processed")
    axes[2].set_ylabel("processed")
    twin = axes[2].twinx()
    twin.step(dropped.t, dropped.v, where="post", color="C3", label="dropped")
    twin.set_ylabel("dropped", color="C3")
    top = max(1.0, float(np.nanmax(dropped.v, initial=0)) * 1.2)
    twin.set_ylim(-0.03 * top, top)  # a line at 0 stays visible
    axes[2].set_xlabel("time since the window's start (s)")
    axes[2].legend(handles=[*axes[2].get_lines(), *twin.get_lines()], loc="upper left",
                   fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        if complete_s is not None:
            ax.axvline(complete_s, color="0.4", ls="--", lw=0.8)
    if complete_s is not None:
        axes[0].annotate("scan file complete", (complete_s, 1.0),
                         xycoords=("data", "axes fraction"), xytext=(-3, -3),
                         textcoords="offset points", ha="right", va="top", fontsize=8)
    fig.savefig(path)
    return path
