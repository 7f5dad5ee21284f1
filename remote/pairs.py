"""Training pairs: (preprocessed diffraction frame, label patch of the object at its position).

The input is exactly what the edge feeds the network (:class:`Preprocess`,
recorded in the model card). The label is the reconstruction sampled on the
network's output grid around the frame's position:

- the output grid is ``S x S`` pixels of ``output_pixel_size(...)`` metres, the
  real-space pixel that the (cropped) detector frame resolves;
- patch pixel ``(S - 1) / 2`` (continuous) sits on the scan position, the
  convention of the edge stitcher, so stitched predictions line up;
- the phase is referenced to the circular mean of the patch's central half,
  which removes the solver's arbitrary global phase;
- the amplitude (optional) is divided by the object's amplitude scale so that
  it fits the sigmoid head's (0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ptychoflow.preprocess import Preprocess
from ptychoflow.scanfile import Scan


class PairsError(ValueError):
    """Training pairs that cannot be made; the message names the cause."""


def output_pixel_size(scan: Scan, preprocess: Preprocess) -> float:
    """Real-space pixel of the network output: lambda * z / (crop * detector pixel)."""
    n = preprocess.crop if preprocess.crop is not None else scan.frame_shape[0]
    return scan.wavelength_m * scan.distance_m / (n * scan.pixel_size_m)


@dataclass
class ObjectGrid:
    """A complex image with its pixel size and the pixel of position (0, 0)."""

    image: np.ndarray
    pixel_size_m: float
    origin_px: tuple[float, float]

    @classmethod
    def centred(cls, image: np.ndarray, pixel_size_m: float) -> ObjectGrid:
        """An object whose centre pixel ``shape // 2`` is position (0, 0)."""
        return cls(image, pixel_size_m, (image.shape[0] // 2, image.shape[1] // 2))

    def sample(self, y_m: np.ndarray, x_m: np.ndarray, order: int = 1) -> np.ndarray:
        """Complex values at points (metres); points outside the image raise."""
        rows = self.origin_px[0] + np.asarray(y_m) / self.pixel_size_m
        cols = self.origin_px[1] + np.asarray(x_m) / self.pixel_size_m
        h, w = self.image.shape
        if rows.min() < 0 or cols.min() < 0 or rows.max() > h - 1 or cols.max() > w - 1:
            raise PairsError(
                f"scan positions reach outside the object: the patches need rows "
                f"{rows.min():.0f}..{rows.max():.0f} and columns {cols.min():.0f}.."
                f"{cols.max():.0f} of a {h}x{w} object; is the reconstruction from this scan?")
        coords = np.stack([rows.ravel(), cols.ravel()])
        re = ndimage.map_coordinates(self.image.real.astype(np.float64), coords, order=order)
        im = ndimage.map_coordinates(self.image.imag.astype(np.float64), coords, order=order)
        return (re + 1j * im).reshape(rows.shape)

    def patches(self, positions_m: np.ndarray, size: int, pixel_m: float,
                order: int = 1) -> np.ndarray:
        """(N, size, size) complex patches centred (pixel (size-1)/2) on each position."""
        offs = (np.arange(size) - (size - 1) / 2.0) * pixel_m
        ys = positions_m[:, 0, None, None] + offs[None, :, None]
        xs = positions_m[:, 1, None, None] + offs[None, None, :]
        ys, xs = np.broadcast_arrays(ys, xs)
        return self.sample(ys, xs, order=order)


def reference_phase(patches: np.ndarray) -> np.ndarray:
    """Phase of each patch relative to the circular mean of its central half."""
    s = patches.shape[-1]
    q = s // 4
    centre = patches[:, q:s - q, q:s - q].mean(axis=(1, 2))
    rot = np.exp(-1j * np.angle(centre))[:, None, None]
    return np.angle(patches * rot).astype(np.float32)


def amplitude_scale(image: np.ndarray) -> float:
    """A robust maximum of the amplitude, so labels land in (0, 1)."""
    a = np.abs(image)
    return float(np.percentile(a, 99.5)) * 1.05 or 1.0


def make_pairs(scan: Scan, grid: ObjectGrid, preprocess: Preprocess, output_size: int,
               amplitude: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, 1, S, S) and labels (N, 1 or 2, S, S), float32."""
    if output_size != preprocess.input_size:
        raise PairsError(f"network output {output_size} differs from its input "
                         f"{preprocess.input_size}; PtychoNN maps S x S to S x S")
    try:
        preprocess.check_frame_shape(scan.frame_shape)
    except ValueError as exc:
        raise PairsError(f"scan frames do not fit the training set's preprocessing: {exc}") \
            from exc
    px = output_pixel_size(scan, preprocess)
    patches = grid.patches(scan.positions, output_size, px)
    labels = [reference_phase(patches)]
    if amplitude:
        scale = amplitude_scale(grid.image)
        labels.append(np.clip(np.abs(patches) / scale, 0, 1).astype(np.float32))
    x = np.concatenate([preprocess(scan.data[i:i + 256])
                        for i in range(0, scan.n_frames, 256)])
    y = np.stack(labels, axis=1).astype(np.float32)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise PairsError("training pairs contain NaN/inf; the reconstruction or the frames "
                         "are not finite")
    return x, y


def input_scale(scan: Scan, preprocess: Preprocess) -> float:
    """The ``scale`` that brings this scan's preprocessed inputs to about 0..1."""
    probe = Preprocess(preprocess.input_size, preprocess.crop, preprocess.intensity, 1.0)
    x = probe(scan.data[: min(scan.n_frames, 256)])
    top = float(np.percentile(x, 99.9))
    return 1.0 / top if top > 0 else 1.0
