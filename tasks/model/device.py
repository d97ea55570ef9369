"""Which device the network runs on, its mixed precision there, and how much memory it took."""
from __future__ import annotations

import resource

import torch

from tasks.common.config import UserError


def pick_device(choice: str, local_rank: int = 0, setting: str = "train.device") -> torch.device:
    """A device setting resolved (train.device, inference.device): auto takes the CUDA GPU of this
    process when there is one."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting}: cuda was asked for but no CUDA GPU is visible; use auto or cpu")
    if choice != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast(device: torch.device, graph_safe: bool = False):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); float32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda",
                          cache_enabled=not graph_safe)  # graph capture requires the cast cache off


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: peak allocated by tensors since the last reset. CPU: the process's peak resident memory so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
