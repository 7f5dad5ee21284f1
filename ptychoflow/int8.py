"""Static int8 quantization of an ONNX model (ONNX Runtime's QDQ format).

Here, not under ``remote/`` or ``edge/``, because both use it: ``ptychoflow
remote quantize`` writes the int8 copy a beamline deploys, and ``ptychoflow
bench edge --precision int8`` times one. It needs only ``onnxruntime``, which
the edge has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def quantize_int8(src: str | Path, dst: str | Path, calibration: np.ndarray,
                  input_name: str = "diffraction") -> Path:
    """Static int8 (QDQ, per-channel weights) copy of ``src``, calibrated on ``calibration``.

    ``calibration``: (N, 1, H, W) preprocessed frames like those the edge will see.
    On CPUs with VNNI/AMX ONNX Runtime runs the result about twice as fast as
    float32; check its error against the float model on real data before use.
    """
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return Path(dst)
