"""Fine-tuning strategies: which layers train in which epoch, and at what share of the learning rate.

A model is cut into layer groups from the input up (timm's own stage matcher; for torchvision the
top-level modules, with big Sequential stacks split into their blocks); the last group is the
classification head. Then

    linear_probe   only the head trains (the stage caches the frozen backbone's features)
    full           every group trains from the first step
    gradual        the head alone for freeze_epochs, then groups unfreeze from the top, evenly
                   over unfreeze_epochs, then everything trains (ULMFiT / fastai's fine_tune)

With layer-wise learning-rate decay, group k from the top learns at lr * layer_decay**k, so the
generic low-level features move least.
"""
from __future__ import annotations

import math

from torch import nn

from tasks.common.config import TrainParams
from tasks.model.backbones import head_module

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names in groups from the input up; the last group is the classification head."""
    head = {id(p) for p in head_module(model).parameters()}
    names = [name for name, p in model.named_parameters() if id(p) not in head]
    if hasattr(model, "group_matcher"):  # every timm model: stem, stages or blocks, neck
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=True))
        known = set(names)
        body = [[n for n in group if n in known] for group in grouped.values()]
    else:
        body = _torchvision_groups(model, names)
    head_names = [name for name, p in model.named_parameters() if id(p) in head]
    return [group for group in body if group] + [head_names]


def _torchvision_groups(model: nn.Module, names: list[str]) -> list[list[str]]:
    """Top-level modules in definition order (the forward order for torchvision classifiers);
    a Sequential stack of blocks (resnet's layerN, efficientnet's features) gives a group per block."""
    units = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 1:
            units += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            units.append(name)
    groups: list[list[str]] = [[] for _ in units]
    loose: list[str] = []  # parameters owned by the model itself, e.g. ViT's class token
    for name in names:
        owner = next((i for i, unit in enumerate(units) if name.startswith(unit + ".")), None)
        (loose if owner is None else groups[owner]).append(name)
    return [loose + groups[0]] + groups[1:] if groups else [loose]


def trainable_groups(cfg: TrainParams, epoch: int, total_groups: int) -> int:
    """How many groups, counted from the head down, train in `epoch` (1-based)."""
    if cfg.strategy == "linear_probe":
        return 1
    if cfg.strategy == "full":
        return total_groups
    if epoch <= cfg.freeze_epochs:
        return 1
    into_unfreezing = epoch - cfg.freeze_epochs
    if into_unfreezing > cfg.unfreeze_epochs:
        return total_groups
    body = total_groups - 1
    return 1 + math.ceil(body * into_unfreezing / (cfg.unfreeze_epochs + 1))


def set_trainable(model: nn.Module, groups: list[list[str]], count: int) -> int:
    """Let the top `count` groups train and freeze the rest; returns the trainable parameter count.

    Normalization layers in frozen groups also stop updating their running statistics (call
    `freeze_norm_stats` after every `model.train()`), as the frozen weights expect them.
    """
    trainable = {name for group in groups[len(groups) - count:] for name in group}
    total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
        total += param.numel() if name in trainable else 0
    return total


def freeze_norm_stats(model: nn.Module) -> None:
    """Put normalization layers whose parameters are all frozen into eval mode."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, NORM_TYPES) and params and not any(p.requires_grad for p in params):
            module.eval()


def param_groups(model: nn.Module, groups: list[list[str]], cfg: TrainParams) -> list[dict]:
    """Optimizer parameter groups: a learning rate per layer group (layer-wise decay from the head
    down) and no weight decay for biases and normalization weights (1-d tensors)."""
    params = dict(model.named_parameters())
    out = []
    for depth, group in enumerate(reversed(groups)):
        lr = cfg.lr * cfg.layer_decay ** depth
        decay = [params[n] for n in group if params[n].ndim > 1]
        no_decay = [params[n] for n in group if params[n].ndim <= 1]
        for tensors, weight_decay in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if tensors:
                out.append({"params": tensors, "lr": lr, "weight_decay": weight_decay, "depth": depth})
    return out
