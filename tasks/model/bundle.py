"""The model bundle: weights in safetensors plus a JSON sidecar, and everything needed to use them.

    models/model.safetensors   backbone + head weights, and the embedding projection
    models/model.json          labels, backbone, input size, mean/std, eval crop share, projection size,
                               calibration temperature and test-time augmentation

Training, evaluation, the service and monitoring all load it through `load_bundle`, so images are
preprocessed, classified and embedded the same way everywhere. Nothing is unpickled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.model.backbones import head_logits, pooled_features, rebuild
from tasks.model.meta import EMBEDDING_DIMS, META_FILE, PROJECTION_PREFIX, WEIGHTS_FILE, read_meta
from tasks.model.preprocess import preprocess_array


@dataclass
class Bundle:
    model: nn.Module
    labels: list[str]
    backbone: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    projection_mean: torch.Tensor  # (D,)
    projection: torch.Tensor  # (D, EMBEDDING_DIMS)
    temperature: float = 1.0  # probabilities are softmax(logits / temperature) (tasks/evaluation/calibration.py)
    tta: str = "none"  # hflip: logits are the mean over the image and its mirror image
    device: torch.device = torch.device("cpu")

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return preprocess(images, self.image_size, self.mean, self.std, self.crop_pct)

    @torch.inference_mode()
    def logits_and_features(self, batch: torch.Tensor, tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated logits (N, C) and backbone features (N, D), with the bundle's test-time
        augmentation unless `tta` overrides it."""
        self.model.eval()
        batch = batch.to(self.device)
        features = pooled_features(self.model, batch)
        logits = with_tta(head_logits(self.model, features), batch, tta or self.tta,
                          lambda images: head_logits(self.model, pooled_features(self.model, images)))
        return logits.float().cpu(), features.float().cpu()

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Calibrated class probabilities from logits_and_features' logits."""
        return torch.softmax(logits.float() / self.temperature, dim=1).numpy()

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        return self.probabilities(self.logits_and_features(batch)[0])

    def project(self, features: torch.Tensor) -> np.ndarray:
        """Backbone features -> the low-dimensional embedding that drift monitoring compares."""
        return ((features - self.projection_mean) @ self.projection).numpy()

    def to(self, device: str | torch.device) -> "Bundle":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self


def with_tta(logits: torch.Tensor, batch: torch.Tensor, tta: str, logits_of) -> torch.Tensor:
    """The logits under test-time augmentation: for hflip, their mean with those of the mirror images."""
    return (logits + logits_of(batch.flip(-1))) / 2 if tta == "hflip" else logits


def preprocess(images: list[Image.Image], image_size: int, mean, std, crop_pct: float) -> torch.Tensor:
    """RGB PIL images -> the normalized float batch (N, 3, S, S) (tasks/model/preprocess.py)."""
    return torch.from_numpy(preprocess_array(images, image_size, mean, std, crop_pct))


def fit_projection(features: torch.Tensor, dims: int = EMBEDDING_DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of backbone features on training images: a stable basis for embedding drift."""
    mean = features.mean(dim=0)
    centred = features - mean
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    components = v[:dims].T.contiguous()
    if components.shape[1] < dims:  # fewer images than dims: pad with zero columns
        components = torch.nn.functional.pad(components, (0, dims - components.shape[1]))
    return mean.contiguous(), components


def save_bundle(out_dir: Path, model: nn.Module, meta: dict, projection: tuple[torch.Tensor, torch.Tensor]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[PROJECTION_PREFIX + "mean"], tensors[PROJECTION_PREFIX + "components"] = projection
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    (out_dir / META_FILE).write_text(json.dumps({**meta, "embedding_dims": EMBEDDING_DIMS}, indent=2))


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> Bundle:
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    tensors = load_file(str(Path(bundle_dir) / WEIGHTS_FILE))
    projection_mean = tensors.pop(PROJECTION_PREFIX + "mean")
    projection = tensors.pop(PROJECTION_PREFIX + "components")
    model = rebuild(meta["backbone"], len(meta["labels"]))
    model.load_state_dict(tensors)
    model.eval()
    bundle = Bundle(
        model=model,
        labels=list(meta["labels"]),
        backbone=meta["backbone"],
        image_size=int(meta["image_size"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        crop_pct=float(meta["crop_pct"]),
        projection_mean=projection_mean,
        projection=projection,
        temperature=float(meta["temperature"]),
        tta=meta["tta"],
    )
    return bundle.to(device)
