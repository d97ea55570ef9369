"""The bundle's network as ONNX, run by ONNX Runtime: the same logits and features as PyTorch.

    export_onnx(bundle, path)          images (N, 3, S, S) -> logits (N, C), features (N, D), any N
    OnnxNetwork(path)                  an ONNX Runtime CPU session with Bundle.logits_and_features' contract
    parity(bundle, network, batch)     largest probability difference and top-1 agreement against PyTorch

Only the network moves to ONNX. The preprocessing, the calibration temperature, test-time
augmentation and the embedding projection stay in the bundle (tasks/model/bundle.py), so a model
run by ONNX Runtime classifies and embeds exactly as the bundle does, and monitoring sees the same
embeddings.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tasks.common.config import UserError
from tasks.model.backbones import head_logits, pooled_features
from tasks.model.bundle import Bundle, with_tta

INPUT, OUTPUTS = "images", ["logits", "features"]


class _LogitsAndFeatures(nn.Module):
    """The bundle's network with both outputs the service needs: one pass, as in PyTorch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = pooled_features(self.model, images)
        return head_logits(self.model, features), features


def export_onnx(bundle: Bundle, path: Path) -> Path:
    """Write the bundle's network to `path` with PyTorch's exporter (torch.export), batch size free."""
    network = _LogitsAndFeatures(bundle.model.cpu()).eval()
    example = torch.zeros(2, 3, bundle.image_size, bundle.image_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its steps
        torch.onnx.export(network, (example,), str(path), input_names=[INPUT], output_names=OUTPUTS,
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    bundle.to(bundle.device)
    return path


class OnnxNetwork:
    """An ONNX Runtime session on the CPU; `logits_and_features` as Bundle's, from the same batches."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort  # only the processes that run the network load it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's choice, every core
        options.log_severity_level = 3  # its warnings are about graph rewrites, not about this model
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # a missing, truncated or foreign file: onnxruntime's own error types
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"{path}: ONNX Runtime cannot load it ({reason}); export it again") from None

    def logits_and_features(self, batch: torch.Tensor, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, features = self.session.run(OUTPUTS, {INPUT: np.ascontiguousarray(images.numpy(), np.float32)})
            return torch.from_numpy(logits), torch.from_numpy(features)

        logits, features = run(batch.cpu())
        return with_tta(logits, batch.cpu(), tta, lambda images: run(images)[0]), features


def parity(bundle: Bundle, network: OnnxNetwork, batch: torch.Tensor) -> dict:
    """How far the ONNX network's calibrated probabilities and embeddings are from PyTorch's on `batch`."""
    torch_logits, torch_features = bundle.logits_and_features(batch)
    onnx_logits, onnx_features = network.logits_and_features(batch, bundle.tta)
    expected, got = bundle.probabilities(torch_logits), bundle.probabilities(onnx_logits)
    return {
        "images": len(batch),
        "max_probability_difference": float(np.abs(expected - got).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
        "max_embedding_difference": float(np.abs(bundle.project(torch_features) - bundle.project(onnx_features)).max()),
    }
