"""The model as it is served: the bundle's network in the runtime it was packaged with, NumPy in and out.

    load_classifier(model_dir)   -> Classifier: preprocess(images), predict(batch) -> (probabilities, embeddings)

A model folder (models/ with runtime/, or a model in the BentoML store) may hold `runtime.json`,
written by the evaluate stage: the runtime chosen by measurement (tasks/evaluation/runtimes.py) and
its ONNX file. ONNX Runtime then runs the network, and PyTorch is never imported: the service's
processes stay small. With no runtime.json, or `"runtime": "torch"`, the bundle's PyTorch weights run.
A runtime that cannot be loaded (a missing or corrupted file, an onnxruntime that refuses it) falls
back to the PyTorch weights; `Classifier.fallback` says why in one line, for the caller to log.

Everything around the network is the bundle's, computed here in NumPy: the preprocessing
(tasks/model/preprocess.py), test-time augmentation, the calibration temperature and the embedding
projection that drift monitoring compares. So the probabilities and embeddings of a served model
are its runtime's, whichever process computes them (the service, the monitor stage, the monitor flow).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from safetensors import safe_open

from tasks.common.config import UserError
from tasks.common.threads import cores
from tasks.model.meta import PROJECTION_PREFIX, WEIGHTS_FILE, read_meta
from tasks.model.preprocess import preprocess_array

RUNTIME_JSON = "runtime.json"
RUNTIMES = ("torch", "onnx", "onnx-int8")  # what evaluate.runtime may name, besides auto
INPUT, OUTPUTS = "images", ["logits", "features"]  # the exported graph's names (tasks/model/export.py)

Network = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # batch -> logits, features


class OnnxNetwork:
    """An ONNX Runtime session on the CPU: a batch (N, 3, S, S) -> uncalibrated logits and features."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort  # only the processes that run the network load it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cores()  # 0: this process's cores (tasks/common/threads.py)
        # Idle threads sleep: spinning ones take the cores of whatever computes beside this process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # its warnings are about graph rewrites, not about this model
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # a missing, truncated or foreign file: onnxruntime's own error types
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"{path}: ONNX Runtime cannot load it ({reason}); export it again") from None

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.session.run(OUTPUTS, {INPUT: np.ascontiguousarray(batch, np.float32)})
        return logits, features

    def logits_and_features(self, batch: np.ndarray, tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
        """As Bundle.logits_and_features: with hflip, the logits are the mean over the image and its mirror."""
        logits, features = self(batch)
        if tta == "hflip":
            logits = (logits + self(batch[..., ::-1])[0]) / 2
        return logits, features


@dataclass
class Classifier:
    """A bundle's preprocessing, calibration and embedding around a network in one runtime."""

    meta: dict
    network: Network  # uncalibrated logits and features, test-time augmentation included
    projection_mean: np.ndarray  # (D,)
    projection: np.ndarray  # (D, EMBEDDING_DIMS)
    runtime: str  # the runtime that actually runs: torch after a fallback
    fallback: str = ""  # why the packaged runtime is not the one running, if it is not

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    def preprocess(self, images: list[Image.Image]) -> np.ndarray:
        meta = self.meta
        return preprocess_array(images, int(meta["image_size"]), meta["mean"], meta["std"], float(meta["crop_pct"]))

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, C) and projected embeddings (N, EMBEDDING_DIMS) of a preprocessed batch."""
        logits, features = self.network(batch)
        return softmax(logits / float(self.meta["temperature"])), (features - self.projection_mean) @ self.projection


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def read_runtime(folder: str | Path) -> dict:
    """`runtime.json` of a model or runtime folder; {"runtime": "torch"} when there is none."""
    path = Path(folder) / RUNTIME_JSON
    if not path.is_file():
        return {"runtime": "torch", "file": None}
    try:
        chosen = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; run the evaluate stage again (dvc repro evaluate)") from None
    if chosen.get("runtime") not in RUNTIMES:
        raise UserError(f"{path} names runtime {chosen.get('runtime')!r}, not one of {', '.join(RUNTIMES)}; "
                        "run the evaluate stage again (dvc repro evaluate)")
    if chosen["runtime"] != "torch" and not isinstance(chosen.get("file"), str):
        raise UserError(f"{path} names no file for runtime {chosen['runtime']}; "
                        "run the evaluate stage again (dvc repro evaluate)")
    return chosen


def load_classifier(model_dir: str | Path, runtime_dir: str | Path | None = None, threads: int = 0,
                    device: str | None = None, runtime: str | None = None) -> Classifier:
    """The model of `model_dir` in the runtime `runtime_dir` (default: model_dir) names, else in PyTorch.

    `threads`: the CPU threads of either runtime (0: this process's cores, tasks/common/threads.py); for
    PyTorch that is the whole process's count (torch.set_num_threads), as the model worker wants. `device`: PyTorch's, when
    PyTorch runs (default: CUDA if there is one). `runtime="torch"`: PyTorch whatever was chosen."""
    model_dir = Path(model_dir)
    runtime_dir = Path(runtime_dir or model_dir)
    meta = read_meta(model_dir)
    with safe_open(str(model_dir / WEIGHTS_FILE), framework="numpy") as weights:  # the two tensors only
        mean, components = (weights.get_tensor(PROJECTION_PREFIX + key) for key in ("mean", "components"))
    chosen, fallback = ({"runtime": "torch"} if runtime == "torch" else read_runtime(runtime_dir)), ""
    if chosen["runtime"] != "torch":
        try:
            network = OnnxNetwork(runtime_dir / chosen["file"], threads)
        except UserError as err:
            fallback = f"{chosen['runtime']} cannot be used ({err}); running the PyTorch weights instead"
        else:
            return Classifier(meta, lambda batch: network.logits_and_features(batch, meta["tta"]), mean, components,
                              chosen["runtime"])
    return Classifier(meta, _torch_network(model_dir, threads, device), mean, components, "torch", fallback)


def _torch_network(model_dir: Path, threads: int, device: str | None) -> Network:
    """The bundle's PyTorch network as a NumPy function (PyTorch is imported here, and only here)."""
    import torch

    from tasks.model.bundle import load_bundle

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(threads or cores())
    bundle = load_bundle(model_dir, device=device)

    def network(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = bundle.logits_and_features(torch.from_numpy(np.array(batch, np.float32)))
        return logits.numpy(), features.numpy()

    return network
