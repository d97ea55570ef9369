"""One optimization step, and the ways to make it cheap on a GPU.

On CUDA a small model's step is a few hundred short kernels, and launching them from Python costs
more than running them. `TrainStep` can capture forward, loss, backward, gradient clipping and the
fused AdamW update in one CUDA graph (static shapes, learning rates held in GPU tensors) and replay
it with one launch per step. Eager mode is the same computation, used on the CPU and wherever
capture does not apply (SGD, torch.compile, several processes).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from tasks.model.device import autocast

AUTO_BATCH_CPU = 64
AUTO_BATCH_LIMIT = 1024
AUTO_BATCH_MEMORY_SHARE = 0.8  # leave room for the optimizer state, the cache and fragmentation


class TrainStep:
    """`step(inputs, soft_targets) -> (loss, logits)`, detached, updating the weights in place."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                 grad_clip: float, device: torch.device, graph: bool):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.grad_clip, self.device, self.graph = grad_clip, device, graph
        self._captured: torch.cuda.CUDAGraph | None = None

    def _forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, graph_safe=self.graph):
            logits = self.model(inputs)
            loss = self.loss_fn(logits.float(), targets)
        loss.backward()
        if self.grad_clip > 0:  # foreach norm and scale: no host sync, so it can be captured too
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=self.device.type == "cuda")
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.graph:
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(inputs, targets)
        if self._captured is None or self._static_inputs.shape != inputs.shape:
            self._capture(inputs, targets)
        self._static_inputs.copy_(inputs)
        self._static_targets.copy_(targets)
        self._captured.replay()
        return self._static_loss, self._static_logits

    def _capture(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Warm up on a side stream, then record one step. The warm-up steps are undone, so a
        captured run sees exactly the updates an eager run does."""
        saved_model = copy.deepcopy(self.model.state_dict())
        saved_state = {p: {k: v.clone() for k, v in state.items()} for p, state in self.optimizer.state.items()}
        self._static_inputs = inputs.clone()
        self._static_targets = targets.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # lets the optimizer create its state and cuDNN pick its kernels
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward(self._static_inputs, self._static_targets)
        torch.cuda.current_stream().wait_stream(side)
        # Undo in place: the graph must use the tensors that exist now, so they are refilled, not replaced.
        self.model.load_state_dict(saved_model)
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if param in saved_state:
                    value.copy_(saved_state[param][key])
                else:
                    value.zero_()
        self.optimizer.zero_grad(set_to_none=True)
        self._captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._captured):
            self._static_loss, self._static_logits = self._forward_backward(self._static_inputs, self._static_targets)


def why_not_capturable(optimizer_name: str, device: torch.device, compiled: bool, processes: int) -> str | None:
    """Why the training step cannot be captured in a CUDA graph, or None when it can."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if optimizer_name != "adamw":
        return "CUDA graph capture is implemented for the fused AdamW update only"
    if compiled:
        return "torch.compile manages its own graphs"
    if processes > 1:
        return "DistributedDataParallel all-reduces outside a captured graph"
    return None


def auto_batch_size(model: nn.Module, image_size: int, device: torch.device) -> int:
    """The largest power-of-two batch (up to AUTO_BATCH_LIMIT) whose training step fits in GPU memory.

    Tried on a copy of the model, so the real one's weights and normalization statistics stay as
    they are. On the CPU memory is rarely the limit: AUTO_BATCH_CPU.
    """
    if device.type != "cuda":
        return AUTO_BATCH_CPU
    probe = copy.deepcopy(model).train()
    total = torch.cuda.get_device_properties(device).total_memory
    best, size = 0, 16
    while size <= AUTO_BATCH_LIMIT:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            inputs = torch.randn(size, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
            with autocast(device):
                loss = probe(inputs).float().logsumexp(1).mean()
            loss.backward()
            probe.zero_grad(set_to_none=True)
            # Adam keeps two more copies of every weight; the peak above holds one set of gradients.
            needed = torch.cuda.max_memory_allocated(device) + 2 * sum(p.numel() * 4 for p in probe.parameters())
            if needed > AUTO_BATCH_MEMORY_SHARE * total:
                break
            best, size = size, size * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            probe.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    del probe
    torch.cuda.empty_cache()
    return max(best, 1)
