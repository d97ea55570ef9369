"""In-process speed and accuracy of one bundle in each runtime: PyTorch, ONNX Runtime fp32, int8.

For a trained bundle (default: the pipeline's models/, the 32 px digits model), in this process:
    torch         the bundle as the service runs it today (Bundle.logits_and_features)
    onnx          the network exported by tasks/model/export.py, in ONNX Runtime (fp32)
    onnx-int8     ONNX Runtime's static int8 (QDQ), calibrated on --calibration training images
    onnx-int8-dyn ONNX Runtime's dynamic int8 (no calibration)
and prints, per runtime: images/s on preprocessed batches of 64 and one image at a time (the
network alone: preprocessing is the same for all), test accuracy and macro F1 on the test split,
and top-1 agreement with PyTorch. `--image-size 224` first trains a linear probe of the bundle's
backbone at 224 px on the same split, with the train stage, in a scratch folder.

    python benchmarks/runtimes.py [--workdir .] [--image-size 224] [--seconds 5] [--threads 2]

The evaluate stage measures the same (less dynamic int8) to choose the served runtime
(tasks/evaluation/runtimes.py); the served figures (requests/s, p99, the service's memory) are
benchmarks/serve_throughput.py's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import train  # noqa: E402
from tasks.common.config import load_params  # noqa: E402
from tasks.common.paths import MODEL_DIR  # noqa: E402
from tasks.data.images import open_rgb  # noqa: E402
from tasks.data.splits import read_split  # noqa: E402
from tasks.evaluation.runtimes import rate  # noqa: E402
from tasks.model.bundle import load_bundle  # noqa: E402
from tasks.model.export import export_onnx  # noqa: E402
from tasks.model.quantize import quantize_dynamic_int8, quantize_static_int8  # noqa: E402
from tasks.model.served import OnnxNetwork  # noqa: E402


def images_of(workdir: Path, split: str, bundle, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    frame = read_split(workdir, split)
    if limit:
        frame = frame.sample(n=min(limit, len(frame)), random_state=0)
    batch = bundle.preprocess([open_rgb(workdir / f) for f in frame["file"]])
    return batch, np.array([bundle.labels.index(label) for label in frame["label"]])


class TensorsIn:
    """An ONNX Runtime network called as the bundle is: tensors in and out."""

    def __init__(self, network: OnnxNetwork):
        self.network = network

    def logits_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(out) for out in self.network.logits_and_features(batch.numpy()))


def probe_at(size: int, workdir: Path, scratch: Path) -> Path:
    """A linear probe of params.yaml's backbone at `size` px on workdir's split; its bundle folder."""
    for name in ("data/split", "data/clean"):
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).symlink_to((workdir / name).resolve())
    params = load_params(workdir / "params.yaml")
    recipe = params.train.model_copy(update={"image_size": size, "strategy": "linear_probe", "epochs": 3})
    with contextlib.redirect_stdout(sys.stderr):
        train.run(params.model_copy(update={"train": recipe}), scratch)
    return scratch / MODEL_DIR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/runtimes.py", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="a project that ran the pipeline")
    parser.add_argument("--image-size", type=int, default=None, help="train a linear probe at this size first")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per runtime and batch size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for PyTorch and ONNX Runtime")
    parser.add_argument("--calibration", type=int, default=256, help="training images for static int8")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        bundle_dir = probe_at(args.image_size, args.workdir, scratch / "probe") if args.image_size \
            else args.workdir / MODEL_DIR
        bundle = load_bundle(bundle_dir)
        test, truth = images_of(args.workdir, "test", bundle)
        calibration, _ = images_of(args.workdir, "train", bundle, limit=args.calibration)
        fp32 = export_onnx(bundle, scratch / "model.onnx")
        files = {
            "torch": bundle_dir / "model.safetensors",
            "onnx": fp32,
            "onnx-int8": quantize_static_int8(fp32, scratch / "int8.onnx", calibration),
            "onnx-int8-dyn": quantize_dynamic_int8(fp32, scratch / "int8-dyn.onnx"),
        }
        reference = None
        for name, file in files.items():
            network = bundle if name == "torch" else TensorsIn(OnnxNetwork(file, args.threads))
            logits = torch.cat([network.logits_and_features(test[i:i + 64])[0] for i in range(0, len(test), 64)])
            predicted = logits.argmax(1).numpy()
            reference = predicted if reference is None else reference
            row = {
                "runtime": name, "image_size": bundle.image_size, "threads": args.threads,
                "batch64_img_s": round(rate(lambda b: network.logits_and_features(b), test[:64], args.seconds), 1),
                "single_img_s": round(rate(lambda b: network.logits_and_features(b), test[:1], args.seconds), 1),
                "test_accuracy": round(float((predicted == truth).mean()), 4),
                "test_macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
                "agreement_with_torch": round(float((predicted == reference).mean()), 4),
                "test_images": len(truth), "model_mb": round(file.stat().st_size / 1e6, 2),
            }
            print(json.dumps(row), flush=True)
        shutil.rmtree(scratch / "probe", ignore_errors=True)


if __name__ == "__main__":
    main()
