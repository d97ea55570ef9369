"""int8 variants of an exported network, made by ONNX Runtime's own quantisation tools.

    static    weights and activations in int8 (QDQ format), the activations' ranges calibrated on
              training images as the model sees them (preprocessed)
    dynamic   weights in int8, activations quantised on the fly per batch (convolutions become
              ConvInteger); no calibration images needed

Both start from ONNX Runtime's pre-processing (shape inference and graph optimisation), which its
quantiser asks for. Whether either is worth serving is decided by measurement, not here.
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from tasks.model.served import INPUT


class _Batches(CalibrationDataReader):
    """Preprocessed calibration images, `batch` at a time, as the quantiser reads them."""

    def __init__(self, images: torch.Tensor, batch: int):
        self.parts = iter([{INPUT: np.ascontiguousarray(images[i:i + batch].numpy(), np.float32)}
                           for i in range(0, len(images), batch)])

    def get_next(self) -> dict | None:
        return next(self.parts, None)


def _prepared(fp32: Path, scratch: Path) -> Path:
    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    return prepared


def quantize_static_int8(fp32: Path, out: Path, calibration: torch.Tensor, batch: int = 32) -> Path:
    """`out`: the network with int8 weights and activations, ranges from `calibration` (N, 3, S, S)."""
    with tempfile.TemporaryDirectory() as scratch, _quiet():
        quantize_static(str(_prepared(fp32, Path(scratch))), str(out), _Batches(calibration, batch),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
    return out


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """`out`: the network with int8 weights where ONNX Runtime quantises dynamically."""
    with tempfile.TemporaryDirectory() as scratch, _quiet():
        quantize_dynamic(str(_prepared(fp32, Path(scratch))), str(out), weight_type=QuantType.QInt8)
    return out


@contextmanager
def _quiet():
    """The quantiser logs advice through the root logger at WARNING; none of it concerns this model."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
