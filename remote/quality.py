"""How good a network is: its stitched phase map against the iterative reconstruction
(and, for simulated scans, against the truth).

The network predicts each patch's phase relative to the patch's own centre
(see :mod:`.pairs`), so before a patch is stitched its constant offset is
matched to the map built so far over their overlap. The map is the edge's
:class:`~ptychoflow.stitch.Stitcher` (plain average of overlaps), so the
figures describe what the beamline sees on ``Edge:Stitched``; a Gaussian
window per patch (``sigma_fraction``) is available but measured no better. Reference and
map are compared on the map's grid, over the pixels the scan covered well,
after removing a constant phase offset: SSIM (uniform 7x7 window, as
scikit-image's default), PSNR over the reference's range, and the RMS phase
difference.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy import ndimage

from ptychoflow.remote.pairs import ObjectGrid
from ptychoflow.remote.phasemap import PhaseMap
from ptychoflow.scanfile import Scan
from ptychoflow.stitch import Stitcher


def window(size: int, sigma_fraction: float | None = 1 / 6) -> np.ndarray:
    """Stitching weight of a patch pixel: a Gaussian of ``sigma_fraction * size`` about the
    centre (``None``: uniform). The network is surest where the probe was, near the
    centre; its guesses at the edge of the field of view should count less.
    """
    if sigma_fraction is None:
        return np.ones((size, size))
    r = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-0.5 * (r / (sigma_fraction * size)) ** 2)
    return np.outer(g, g)


class WeightedStitcher(Stitcher):
    """The edge's stitcher with a per-pixel weight for each patch (same placement rules)."""

    def add_weighted(self, patch: np.ndarray, weight: np.ndarray, x_m: float,
                     y_m: float) -> None:
        """Place ``patch`` centred at (x, y) metres, each pixel counted with ``weight``."""
        h, w = patch.shape
        top = y_m / self.pixel - (h - 1) / 2.0
        left = x_m / self.pixel - (w - 1) / 2.0
        r, c = int(np.floor(top)), int(np.floor(left))
        fr, fc = top - r, left - c
        self._ensure(r, c, r + h + 1, c + w + 1)
        r -= self._origin[0]
        c -= self._origin[1]
        wp = weight * patch
        for dr, wr in ((0, 1.0 - fr), (1, fr)):
            for dc, wc in ((0, 1.0 - fc), (1, fc)):
                k = wr * wc
                if k > 1e-12:
                    self._sum[r + dr:r + dr + h, c + dc:c + dc + w] += k * wp
                    self._w[r + dr:r + dr + h, c + dc:c + dc + w] += k * weight
        self.count += 1


def stitch_phase(phases: np.ndarray, positions_m: np.ndarray, pixel_m: float,
                 align: bool = True, sigma_fraction: float | None = None) -> Stitcher:
    """Stitch (N, S, S) phase patches at (N, 2) (y, x) metres; offsets matched on overlap."""
    st = WeightedStitcher(pixel_m)
    s = phases.shape[-1]
    wgt = window(s, sigma_fraction)
    for patch, (y, x) in zip(phases, positions_m, strict=True):
        p = patch.astype(np.float64)
        if align and st.count:
            r, c = st.global_to_map(y, x)
            r0, c0 = int(round(r - (s - 1) / 2)), int(round(c - (s - 1) / 2))
            img, cov = st.image(), st.covered()
            h, w = img.shape
            rr0, cc0 = max(r0, 0), max(c0, 0)
            rr1, cc1 = min(r0 + s, h), min(c0 + s, w)
            if rr1 > rr0 and cc1 > cc0:
                m = cov[rr0:rr1, cc0:cc1]
                if m.sum() > 16:
                    sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
                    sub = p[sl][m]
                    ref = img[rr0:rr1, cc0:cc1][m]
                    k = wgt[sl][m] * st._w[rr0:rr1, cc0:cc1][m]  # noqa: SLF001
                    p = p + float(np.angle(np.sum(k * np.exp(1j * (ref - sub)))))
        st.add_weighted(p, wgt, x_m=x, y_m=y)
    return st


def reference_on_map(st: Stitcher, grid: ObjectGrid) -> tuple[np.ndarray, np.ndarray]:
    """A complex object sampled on the stitched map's grid; and where that is possible."""
    h, w = st.image().shape
    oy, ox = st.origin_m
    ys = oy + np.arange(h)[:, None] * st.pixel + np.zeros((1, w))
    xs = ox + np.arange(w)[None, :] * st.pixel + np.zeros((h, 1))
    rows = grid.origin_px[0] + ys / grid.pixel_size_m
    cols = grid.origin_px[1] + xs / grid.pixel_size_m
    ok = (rows >= 0) & (cols >= 0) & (rows <= grid.image.shape[0] - 1) & \
        (cols <= grid.image.shape[1] - 1)
    out = np.zeros((h, w), np.complex128)
    out[ok] = grid.sample(ys[ok], xs[ok])
    return out, ok


def coverage_mask(st: Stitcher, patch: int, min_weight: float = 0.5) -> np.ndarray:
    """Pixels stitched with at least ``min_weight`` of the median weight.

    Eroded by an eighth of a patch so the scan's ragged rim does not count.
    """
    w = st._w  # noqa: SLF001 - the stitcher's weight map is exactly the coverage
    pos = w[w > 1e-9]
    good = w >= min_weight * (float(np.median(pos)) if pos.size else 1.0)
    return ndimage.binary_erosion(good, iterations=max(1, patch // 8))


def remove_offset(a: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a`` shifted by the constant that best matches ``ref`` on ``mask`` (wrapped)."""
    off = np.angle(np.mean(np.exp(1j * (ref[mask] - a[mask]))))
    return a + off


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray, data_range: float,
         win: int = 7) -> float:
    """Mean structural similarity of ``a`` to reference ``b`` over ``mask`` (7x7 windows)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    f = lambda z: ndimage.uniform_filter(z, size=win, mode="reflect")  # noqa: E731
    ma, mb = f(a), f(b)
    n = win * win
    cov = n / (n - 1)
    va = cov * (f(a * a) - ma * ma)
    vb = cov * (f(b * b) - mb * mb)
    vab = cov * (f(a * b) - ma * mb)
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    inner = ndimage.binary_erosion(mask, iterations=win // 2)
    return float(s[inner].mean()) if inner.any() else float("nan")


def compare(phase: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """SSIM, PSNR (dB) and phase RMSE (rad) of ``phase`` against ``reference`` on ``mask``."""
    if mask.sum() < 64:
        raise ValueError("too few pixels in common to compare; is the reference from the "
                         "same scan?")
    a = remove_offset(phase, reference, mask)
    diff = np.angle(np.exp(1j * (a - reference)))
    rng = float(np.ptp(reference[mask])) or 1.0
    rmse = float(np.sqrt(np.mean(diff[mask] ** 2)))
    a_unwrapped = reference + diff  # the same errors, on the reference's branch
    return {"ssim": ssim(np.where(mask, a_unwrapped, 0), np.where(mask, reference, 0), mask,
                         rng),
            "psnr": float(20 * np.log10(rng / max(rmse, 1e-12))), "phase_rmse": rmse}


def map_quality(phases: np.ndarray, positions_m: np.ndarray, pixel_m: float,
                references: dict[str, ObjectGrid],
                sigma_fraction: float | None = None) -> dict[str, Any]:
    """Stitch predicted phases and compare them with each named reference object.

    Keys come out as ``ssim``/``psnr``/``phase_rmse`` for the first reference and
    ``<name>_ssim`` etc. for the others (e.g. ``truth_ssim``).
    """
    st = stitch_phase(phases, positions_m, pixel_m, sigma_fraction=sigma_fraction)
    return stitched_quality(st, phases.shape[-1], references, sigma_fraction)


def stitched_quality(st: Stitcher, patch: int, references: dict[str, ObjectGrid],
                     sigma_fraction: float | None = None) -> dict[str, Any]:
    """:func:`map_quality` of a map already stitched from ``patch``-sized predictions."""
    mask0 = coverage_mask(st, patch)
    est = st.image().astype(np.float64)
    out: dict[str, Any] = {"map_shape": list(est.shape), "covered_pixels": int(mask0.sum()),
                           "stitch_window_sigma": sigma_fraction}
    for i, (name, grid) in enumerate(references.items()):
        ref, ok = reference_on_map(st, grid)
        mask = mask0 & ok
        m = compare(est, np.angle(ref), mask)
        prefix = "" if i == 0 else f"{name}_"
        out.update({f"{prefix}{k}": v for k, v in m.items()})
    return out


def phase_map(st: Stitcher) -> PhaseMap:
    """The stitched map as a :class:`PhaseMap` (NaN where no prediction landed)."""
    img = np.where(st.covered(), st.image(), np.nan).astype(np.float32)
    return PhaseMap(img, st.pixel, st.origin_m)


def object_quality(estimate: ObjectGrid, truth: ObjectGrid, positions_m: np.ndarray,
                   radius_m: float) -> dict[str, float]:
    """Compare two objects (e.g. a reconstruction and the truth) on the truth's grid.

    Only pixels within ``radius_m`` of some scan position count.
    """
    h, w = truth.image.shape
    ys = (np.arange(h) - truth.origin_px[0]) * truth.pixel_size_m
    xs = (np.arange(w) - truth.origin_px[1]) * truth.pixel_size_m
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(positions_m).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    mask = (dist <= radius_m).reshape(h, w)
    est = np.zeros((h, w), np.complex128)
    est[mask] = estimate.sample(yy[mask], xx[mask])
    ref = np.angle(truth.image).astype(np.float64)
    m = compare(np.angle(est), ref, mask)
    a = remove_offset(np.angle(est), ref, mask)
    m["correlation"] = float(np.corrcoef(np.angle(np.exp(1j * (a - ref)))[mask] + ref[mask],
                                         ref[mask])[0, 1])
    return m


def scan_quality(phases: np.ndarray, scan: Scan, pixel_m: float,
                 reconstruction: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """:func:`map_quality` against the scan's reconstruction file and its truth (if any)."""
    return scan_quality_and_map(phases, scan, pixel_m, reconstruction)[0]


def scan_quality_and_map(phases: np.ndarray, scan: Scan, pixel_m: float,
                         reconstruction: str | os.PathLike[str] | None = None) -> \
        tuple[dict[str, Any], PhaseMap]:
    """:func:`scan_quality` and the stitched map it measured (for the run report)."""
    from ptychoflow.remote.recon import read_reconstruction

    refs: dict[str, ObjectGrid] = {}
    if reconstruction:
        rec = read_reconstruction(reconstruction)
        refs["reconstruction"] = ObjectGrid.centred(rec.object, rec.pixel_size_m)
    if scan.truth is not None:
        refs["truth"] = ObjectGrid.centred(
            scan.truth, scan.truth_pixel_size_m or scan.object_pixel_size_m)
    st = stitch_phase(phases, scan.positions, pixel_m)
    if not refs:
        return {"note": "no reconstruction or truth to compare with"}, phase_map(st)
    q = stitched_quality(st, phases.shape[-1], refs)
    q["reference"] = next(iter(refs))
    return q, phase_map(st)


def reconstruction_vs_truth(rec: Any, scan: Scan) -> dict[str, float]:
    """A reconstruction of a simulated scan against its truth, near the scan positions
    (within a quarter of the frame's field): SSIM, PSNR, RMSE and ``correlation``.
    """
    assert scan.truth is not None and scan.truth_pixel_size_m is not None
    return object_quality(ObjectGrid.centred(rec.object, rec.pixel_size_m),
                          ObjectGrid.centred(scan.truth, scan.truth_pixel_size_m),
                          scan.positions, 0.25 * scan.frame_shape[0] * scan.object_pixel_size_m)
