"""Forward model of a far-field ptychography scan, in NumPy.

A complex object is illuminated by a probe at each point of a Fermat spiral;
each frame is the Poisson-noisy intensity ``|F{probe * patch}|^2`` with the
zero frequency in the centre of the frame, as a detector sees it. The FFT is
unitary (``norm="ortho"``), so the expected counts of a frame add up to the
photons that passed the object (Parseval), and ``photons`` sets the dose.

Geometry follows the far-field sampling condition: the object pixel is
``wavelength * distance / (N * detector_pixel)``, so frame size, energy,
distance and detector pixel fix the physical scale of everything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptychoflow.scanfile import PLANCK_EV_M, Scan, read_scan

GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
FRAME_SIZES = (64, 128, 256, 512)
DTYPES: dict[str, type[np.integer]] = {"uint16": np.uint16, "int32": np.int32}
NATURAL = "natural"
"""``simulate_scan(obj=NATURAL)``: a generated natural-looking sample, no image file."""


def object_pixel_size(size: int, energy_ev: float, distance_m: float,
                      pixel_size_m: float) -> float:
    """Real-space pixel (m) of a ``size``-pixel far-field frame."""
    return PLANCK_EV_M / energy_ev * distance_m / (size * pixel_size_m)


def fermat_spiral(n: int, step_m: float) -> np.ndarray:
    """``n`` Fermat-spiral points, (y, x) in metres around (0, 0).

    Points sit at ``r = c * sqrt(k)``, ``theta = k * golden angle``; each covers
    an area ``pi c^2``, and with ``c = step / 1.9`` neighbours are ``step`` apart
    on average (hexagonal packing of that density).
    """
    if n < 1:
        raise ValueError(f"a scan needs at least one point, got {n}")
    k = np.arange(n, dtype=np.float64)
    c = step_m / 1.9
    r = c * np.sqrt(k + 0.5)
    theta = k * GOLDEN_ANGLE
    return np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)


def sample_pattern(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A complex test object: a Siemens star, rings and smooth blobs in phase and amplitude.

    Features span from a few pixels (star centre, ring edges) to the whole
    field, so both the iterative solver and the network have something to get
    right. Phase lies in [-1, 1] rad, amplitude in [0.6, 1].
    """
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y -= h / 2
    x -= w / 2
    r = np.hypot(y, x)
    rmax = min(h, w) / 2
    star = 0.5 * (1 + np.sign(np.sin(18 * np.arctan2(y, x)))) * (r < 0.45 * rmax)
    rings = 0.5 * (1 + np.sign(np.sin(2 * np.pi * r / (0.08 * rmax)))) * \
        ((r > 0.55 * rmax) & (r < 0.8 * rmax))
    rng = np.random.default_rng(seed)
    blobs = np.zeros(shape)
    for _ in range(12):
        cy, cx = rng.uniform(-0.9, 0.9, 2) * rmax
        s = rng.uniform(0.03, 0.12) * rmax
        blobs += rng.uniform(-1, 1) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    blobs /= max(1e-9, np.abs(blobs).max())
    phase = np.clip(0.8 * star - 0.5 * rings + 0.4 * blobs, -1.0, 1.0)
    amplitude = 1.0 - 0.3 * star * 0.5 - 0.2 * rings - 0.1 * np.abs(blobs)
    return (np.clip(amplitude, 0.6, 1.0) * np.exp(1j * phase)).astype(np.complex64)


def natural_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A natural-looking texture in [0, 1]: a 1/f (fractal) field plus soft-edged grains.

    A sample of another kind than :func:`sample_pattern`: no star, no rings, no
    symmetry about the scan centre, and the 1/f spectrum of natural images (structure
    at every scale), so a network trained on the test pattern meets it unprepared. Made
    here rather than read from a picture, so nothing is downloaded; ``seed`` gives
    another piece of the same kind of sample.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / f
    spectrum[0, 0] = 0.0
    field = np.fft.ifft2(spectrum).real
    field = (field - field.mean()) / (field.std() or 1.0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    grains = np.zeros(shape)
    for _ in range(max(4, h * w // 1500)):  # about one grain per 40x40 pixels
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(3, max(4.0, min(h, w) / 12), 2)
        t = rng.uniform(0, np.pi)
        u = ((y - cy) * np.cos(t) + (x - cx) * np.sin(t)) / ry
        v = (-(y - cy) * np.sin(t) + (x - cx) * np.cos(t)) / rx
        grains += rng.uniform(0.5, 1.5) / (1 + np.exp(8 * (np.hypot(u, v) - 1)))
    a = 0.5 * field + grains
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / (hi - lo or 1.0), 0.0, 1.0)


def complex_object(image: np.ndarray, phase_range: float = 1.0) -> np.ndarray:
    """Brightness in [0, 1] as phase in [-phase_range, phase_range], with some absorption."""
    return ((1.0 - 0.3 * image) * np.exp(1j * phase_range * (image - 0.5) * 2)) \
        .astype(np.complex64)


def object_from_image(path: str | Path, shape: tuple[int, int],
                      phase_range: float = 1.0) -> np.ndarray:
    """A complex object from any image file: brightness becomes phase (and some absorption)."""
    from PIL import Image

    try:
        img = Image.open(path).convert("F").resize((shape[1], shape[0]))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    a = np.asarray(img, dtype=np.float64)
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    return complex_object(a, phase_range)


def make_probe(size: int, pixel_m: float, wavelength_m: float, kind: str = "zoneplate",
               diameter_px: float | None = None) -> np.ndarray:
    """An illumination of about ``diameter_px`` pixels (default: a quarter of the frame).

    ``zoneplate``: an annular pupil (zone plate with a central stop) focused and
    then defocused until the beam is ``diameter_px`` wide, giving the ring
    structure of a real defocused zone-plate probe. ``gaussian``: a Gaussian
    spot with a quadratic (curved) wavefront. Unit total intensity.
    """
    d = float(diameter_px if diameter_px is not None else size / 4)
    if not 2 <= d <= size / 1.5:
        raise ValueError(f"probe diameter {d} px does not fit a {size}-pixel frame")
    if kind == "gaussian":
        y, x = np.mgrid[0:size, 0:size].astype(np.float64) - size / 2
        r2 = y * y + x * x
        sigma = d / 2.355
        probe = np.exp(-r2 / (2 * sigma**2)) * np.exp(1j * 2.0 * r2 / (d / 2) ** 2)
    elif kind == "zoneplate":
        f = np.fft.fftfreq(size, d=pixel_m)
        fy, fx = np.meshgrid(f, f, indexing="ij")
        fr = np.hypot(fy, fx)
        fmax = 0.2 / pixel_m
        pupil = ((fr <= fmax) & (fr >= 0.35 * fmax)).astype(np.complex128)
        # geometric cone: diameter = 2 * wavelength * fmax * defocus
        defocus = d * pixel_m / (2 * wavelength_m * fmax)
        pupil *= np.exp(-1j * np.pi * wavelength_m * defocus * fr**2)
        probe = np.fft.fftshift(np.fft.ifft2(pupil))
    else:
        raise ValueError(f"unknown probe kind {kind!r}; use zoneplate or gaussian")
    probe /= np.sqrt(np.sum(np.abs(probe) ** 2))
    return probe.astype(np.complex64)


def _shift_phasors(size: int, frac: np.ndarray) -> np.ndarray:
    """Fourier phase ramps that shift an image by sub-pixel (dy, dx) offsets, (B, N, N)."""
    k = np.fft.fftfreq(size)
    ramp_y = np.exp(-2j * np.pi * frac[:, 0, None] * k[None, :])
    ramp_x = np.exp(-2j * np.pi * frac[:, 1, None] * k[None, :])
    return ramp_y[:, :, None] * ramp_x[:, None, :]


def exit_waves(obj: np.ndarray, probe: np.ndarray, positions_px: np.ndarray) -> np.ndarray:
    """Probe * object patch for each position (y, x) in object pixels about the object centre.

    The probe is shifted by the sub-pixel part of each position, the object
    patch by the integer part, so positions keep their full precision.
    """
    n = probe.shape[0]
    centre = np.array(obj.shape, dtype=np.float64) / 2
    corner = centre + positions_px - n / 2
    whole = np.floor(corner).astype(int)
    frac = corner - whole
    if np.any(whole < 0) or np.any(whole + n > np.array(obj.shape)):
        raise ValueError("scan positions reach outside the object; enlarge the object or "
                         "shrink the scan")
    pf = np.fft.fft2(probe)
    shifted = np.fft.ifft2(pf[None] * _shift_phasors(n, frac))
    out = np.empty((len(positions_px), n, n), dtype=np.complex64)
    for i, (wy, wx) in enumerate(whole):
        out[i] = shifted[i] * obj[wy:wy + n, wx:wx + n]
    return out


def far_field(waves: np.ndarray) -> np.ndarray:
    """Expected intensities, zero frequency centred; unitary FFT keeps the total (Parseval)."""
    f = np.fft.fftshift(np.fft.fft2(waves, norm="ortho"), axes=(-2, -1))
    return (f.real**2 + f.imag**2).astype(np.float64)


def object_shape_for(positions_px: np.ndarray, size: int, margin: int = 8) -> tuple[int, int]:
    """The smallest even object that holds every frame of the scan plus a margin."""
    extent = 2 * np.ceil(np.abs(positions_px).max(axis=0)) + size + 2 * margin
    return int(extent[0] + extent[0] % 2), int(extent[1] + extent[1] % 2)


def simulate_scan(n_frames: int = 963, size: int = 128, step_m: float = 50e-9,
                  photons: float = 1e6, dtype: str = "uint16", probe: str = "zoneplate",
                  probe_diameter_px: float | None = None, obj: str | Path | None = None,
                  seed: int = 0, energy_ev: float = 8800.0, distance_m: float = 2.0,
                  pixel_size_m: float = 75e-6) -> Scan:
    """Simulate a whole scan: frames, positions, probe and the truth object.

    ``obj`` is ``None`` for the built-in test pattern, ``"natural"`` for
    :func:`natural_image` (``seed`` picks the piece), an image file, or a scan file
    whose truth is reused (at this scan's pixel size).
    """
    if size not in FRAME_SIZES:
        raise ValueError(f"frame size {size} is not one of {FRAME_SIZES}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not photons > 0:
        raise ValueError(f"photons must be positive, got {photons}")
    dx = object_pixel_size(size, energy_ev, distance_m, pixel_size_m)
    positions = fermat_spiral(n_frames, step_m)
    pos_px = positions / dx
    shape = object_shape_for(pos_px, size)
    if obj is None:
        truth = sample_pattern(shape, seed)
    elif str(obj) == NATURAL:
        truth = complex_object(natural_image(shape, seed))
    elif str(obj).endswith((".h5", ".cxi", ".npz.bz2")):
        src = read_scan(obj)
        if src.truth is None:
            raise ValueError(f"{obj} has no truth object to reuse (ours: /entry/sample/truth, "
                             "CXI written by ptychoflow: /entry_1/ptychoflow/truth)")
        truth = _fit(src.truth, shape)
    else:
        truth = object_from_image(obj, shape)
    wavelength = PLANCK_EV_M / energy_ev
    p = make_probe(size, dx, wavelength, probe, probe_diameter_px) * np.sqrt(photons)
    rng = np.random.default_rng(seed + 1)
    out_t = DTYPES[dtype]
    limit = np.iinfo(out_t).max
    data = np.empty((n_frames, size, size), dtype=out_t)
    for start in range(0, n_frames, 64):
        sl = slice(start, min(start + 64, n_frames))
        counts = rng.poisson(far_field(exit_waves(truth, p, pos_px[sl])))
        data[sl] = np.minimum(counts, limit)  # a real detector saturates, it does not wrap
    return Scan(data=data, positions=positions, energy_ev=energy_ev, distance_m=distance_m,
                pixel_size_m=pixel_size_m, probe=p.astype(np.complex64), truth=truth,
                truth_pixel_size_m=dx,
                metadata={"source": "ptychoflow sim", "seed": seed, "photons": photons,
                          "step_m": step_m, "probe_kind": probe})


def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop or pad (with free space) ``image`` to ``shape``."""
    out = np.ones(shape, dtype=np.complex64)
    h = min(shape[0], image.shape[0])
    w = min(shape[1], image.shape[1])
    oy, ox = (shape[0] - h) // 2, (shape[1] - w) // 2
    iy, ix = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    out[oy:oy + h, ox:ox + w] = image[iy:iy + h, ix:ix + w]
    return out
