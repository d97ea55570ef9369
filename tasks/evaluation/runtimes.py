"""Which runtime serves the bundle: each one exported, scored on the test split and timed, one chosen.

    torch       the bundle's PyTorch weights, as trained
    onnx        the network exported to ONNX (tasks/model/export.py), run by ONNX Runtime in fp32
    onnx-int8   ONNX Runtime's static int8 quantisation (tasks/model/quantize.py), its activation
                ranges calibrated on CALIBRATION_IMAGES training images

Each runtime is scored on the test split, with the bundle's own preprocessing, test-time augmentation
and temperature (accuracy, macro F1, ECE, top-1 agreement with PyTorch, the largest probability
difference), and timed in this process on TIMED_BATCH test images: images/s in one batch and one
image at a time, the network alone. `evaluate.runtime` names the runtime to serve; `auto` takes the
fastest in batches whose test accuracy is within `evaluate.max_accuracy_drop` points of PyTorch's.
Only the runtimes the setting may pick are made and measured: all three for auto, PyTorch alone for torch.

ONNX Runtime's dynamic int8 is not offered: it turns convolutions into ConvInteger, which measured
about 20 times slower than fp32 and classified near chance (benchmarks/runtimes.py, docs/serving.md).

Writes runtime/runtime.json (the choice, why, and every runtime's figures) and the chosen ONNX file,
which the package stage puts next to the bundle in the BentoML store (tasks/model/served.py runs it).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tasks.common.config import UserError
from tasks.data.images import open_rgb
from tasks.evaluation.calibration import softmax
from tasks.evaluation.metrics import classification_metrics
from tasks.model.bundle import Bundle
from tasks.model.export import export_onnx
from tasks.model.quantize import quantize_static_int8
from tasks.model.served import RUNTIME_JSON, OnnxNetwork

CALIBRATION_IMAGES = 256
TIMED_BATCH = 64
TIMING_S = 1.0  # per runtime and batch size: enough to rank runtimes that differ by 20 % or more
FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}


def measure_runtimes(bundle: Bundle, test_files: list[Path], targets: np.ndarray, torch_probs: np.ndarray,
                     train_files: list[Path], batch_size: int, bins: int, scratch: Path,
                     setting: str = "auto") -> tuple[dict, dict[str, Path]]:
    """The figures of PyTorch and of the runtimes `setting` (evaluate.runtime) may pick: all for auto,
    else that one; and the ONNX files made in `scratch`. `torch_probs`: the bundle's own calibrated
    test probabilities (the evaluate stage's)."""
    timed = bundle.preprocess([open_rgb(f) for f in np.resize(np.array(test_files, dtype=object), TIMED_BATCH)])
    figures = {"torch": {**_scores(torch_probs, torch_probs, targets, bundle.labels, bins),
                         **_speed(lambda b: bundle.logits_and_features(b), timed)}}
    wanted = list(FILES) if setting == "auto" else [name for name in FILES if name == setting]
    made = {}
    try:
        if wanted:
            made["onnx"] = export_onnx(bundle, scratch / FILES["onnx"])
        if "onnx-int8" in wanted:
            picked = np.random.default_rng(0).permutation(len(train_files))[:CALIBRATION_IMAGES]
            calibration = bundle.preprocess([open_rgb(train_files[i]) for i in sorted(picked)])
            made["onnx-int8"] = quantize_static_int8(made["onnx"], scratch / FILES["onnx-int8"], calibration)
    except Exception as err:  # a backbone the exporter or quantiser cannot take: those runtimes are not offered
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        for name in wanted:
            if name not in made:
                figures[name] = {"error": f"{type(err).__name__}: {reason}"}
    networks = {name: OnnxNetwork(made[name]) for name in wanted if name in made}
    for name, probs in _probabilities(networks, bundle, test_files, batch_size).items():
        network = networks[name]
        figures[name] = {**_scores(probs, torch_probs, targets, bundle.labels, bins),
                         **_speed(lambda b: network.logits_and_features(b.numpy(), bundle.tta), timed),
                         "file_mb": round(made[name].stat().st_size / 2**20, 2)}
    return figures, made


def choose(figures: dict, setting: str, max_drop: float) -> tuple[str, str]:
    """The runtime to serve under `evaluate.runtime` = setting, and why, in one sentence."""
    baseline = figures["torch"]["accuracy"]
    if setting != "auto":
        if "error" in figures.get(setting, {}):
            raise UserError(f"evaluate.runtime is {setting}, which cannot be made for this model "
                            f"({figures[setting]['error']}); set evaluate.runtime: auto or torch")
        drop = 100 * (baseline - figures[setting]["accuracy"])
        side = "below" if drop >= 0 else "above"
        return setting, f"evaluate.runtime is {setting} (test accuracy {abs(drop):.2f} points {side} PyTorch's)"
    within = {name: f for name, f in figures.items()
              if "error" not in f and 100 * (baseline - f["accuracy"]) <= max_drop + 1e-9}
    best = max(within, key=lambda name: within[name]["batch_img_s"])
    left_out = sorted(set(figures) - set(within))
    reason = (f"auto: the fastest in batches of {TIMED_BATCH} ({within[best]['batch_img_s']:.0f} images/s) "
              f"whose test accuracy is within {max_drop} points of PyTorch's")
    if left_out:
        reason += f"; not eligible: {', '.join(left_out)}"
    return best, reason


def write_runtime(out_dir: Path, chosen: str, reason: str, setting: str, max_drop: float, figures: dict,
                  made: dict[str, Path]) -> dict:
    """runtime/: runtime.json and the chosen runtime's ONNX file, if it has one."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if chosen in made:
        shutil.copy2(made[chosen], out_dir / FILES[chosen])
    record = {
        "runtime": chosen, "file": FILES.get(chosen), "reason": reason,
        "setting": setting, "max_accuracy_drop": max_drop, "figures": figures,
        "timed_on": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
                     "timed_batch": TIMED_BATCH, "seconds_each": TIMING_S},
    }
    (out_dir / RUNTIME_JSON).write_text(json.dumps(record, indent=2))
    return record


def _probabilities(networks: dict[str, OnnxNetwork], bundle: Bundle, files: list[Path], batch_size: int
                   ) -> dict[str, np.ndarray]:
    """Each network's calibrated test probabilities, as evaluate computes PyTorch's; images decoded once."""
    parts = {name: [] for name in networks}
    for start in range(0, len(files), batch_size):
        batch = bundle.preprocess([open_rgb(f) for f in files[start:start + batch_size]]).numpy()
        for name, network in networks.items():
            parts[name].append(softmax(network.logits_and_features(batch, bundle.tta)[0], bundle.temperature))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def _scores(probs: np.ndarray, torch_probs: np.ndarray, targets: np.ndarray, labels: list[str], bins: int) -> dict:
    metrics = classification_metrics(targets, probs, labels, 1, bins)
    return {
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "ece": metrics["ece"],
        "top1_agreement": round(float((probs.argmax(1) == torch_probs.argmax(1)).mean()), 4),
        "max_probability_difference": round(float(np.abs(probs - torch_probs).max()), 4),
    }


def _speed(run: Callable[[torch.Tensor], object], batch: torch.Tensor) -> dict:
    return {"batch_img_s": round(rate(run, batch), 1), "single_img_s": round(rate(run, batch[:1]), 1)}


def rate(run: Callable[[torch.Tensor], object], batch: torch.Tensor, seconds: float = TIMING_S) -> float:
    """Images per second of `run` on `batch`, after one warm-up call."""
    run(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)
