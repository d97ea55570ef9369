"""The bundle's network as ONNX, run by ONNX Runtime: the same logits and features as PyTorch.

    export_onnx(bundle, path)          images (N, 3, S, S) -> logits (N, C), features (N, D), any N
    parity(bundle, network, batch)     largest probability difference and top-1 agreement against PyTorch

The exported file runs in ONNX Runtime through tasks/model/served.py (OnnxNetwork), which needs no PyTorch.

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

from tasks.model.backbones import head_logits, pooled_features
from tasks.model.bundle import Bundle
from tasks.model.served import INPUT, OUTPUTS, OnnxNetwork


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


def parity(bundle: Bundle, network: OnnxNetwork, batch: torch.Tensor) -> dict:
    """How far the ONNX network's calibrated probabilities and embeddings are from PyTorch's on `batch`."""
    torch_logits, torch_features = bundle.logits_and_features(batch)
    onnx_logits, onnx_features = (torch.from_numpy(out) for out in network.logits_and_features(batch.numpy(), bundle.tta))
    expected, got = bundle.probabilities(torch_logits), bundle.probabilities(onnx_logits)
    return {
        "images": len(batch),
        "max_probability_difference": float(np.abs(expected - got).max()),
        "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean()),
        "max_embedding_difference": float(np.abs(bundle.project(torch_features) - bundle.project(onnx_features)).max()),
    }
