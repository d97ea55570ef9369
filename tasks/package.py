"""Package stage: the evaluated bundle into the BentoML model store, and a Bento that serves it.

    models/ (model.safetensors, model.json)  ->  model  <package.model_name>:<version>
    data/split/{train,val}.csv                   its trained_on.json: the images it learned from (the gate's)
    runtime/ (runtime.json, its ONNX file)       the runtime that serves it (tasks/model/served.py)
    service/, tasks/, params.yaml             ->  Bento  image-classifier-service:<version>
    reports/package/bento.json                   both tags, and the metrics, hashes and lineage packaged

Lineage (tasks/model/lineage.py: the DVC hashes of data.root and the split, the git commit,
params.yaml's hash, the trigger, the time) goes into the model's metadata under "lineage" and onto
the Bento as one label per field, with the headline test metrics, so that either can be traced to
the data and code it came from (`python -m tasks.production show` prints it).

The stores live under $BENTOML_HOME (default ~/bentoml). The Bento is built by `bentoml build` in a
child process with `--arg model=<tag>`: the service module is imported fresh there, pinned to the
model saved just before, so the Bento packs exactly that version. Serve it with
`bentoml serve <bento tag>`; `bentoml containerize` needs Docker.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError
from tasks.common.files import sha256
from tasks.common.paths import METRICS_JSON, MODEL_DIR, PACKAGE_JSON, RUNTIME_DIR, split_csv
from tasks.model.lineage import bento_labels, collect_lineage
from tasks.model.meta import META_FILE, WEIGHTS_FILE, read_meta
from tasks.model.served import RUNTIME_JSON, read_runtime
from tasks.model.trained_on import FITTED_SPLITS, TRAINED_ON_FILE, current_training_images, write_training_images

# service: the Bento carries params.yaml, whose service section the service reads; data.root: the lineage
PARAMS = ["package", "service", "data.root"]

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # holds service/ and tasks/: the build context
BENTOFILE = "service/bentofile.yaml"
TRAIN_CSV = split_csv("train")
REQUIRED_METRICS = ("accuracy", "macro_f1")
FIX = "run dvc repro evaluate first"


def read_metrics(path: Path) -> dict[str, float]:
    """The numeric top-level entries of the evaluate stage's metrics.json."""
    if not path.is_file():
        raise UserError(f"{path} not found; {FIX}")
    try:
        raw = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; {FIX}") from None
    raw = raw if isinstance(raw, dict) else {}
    metrics = {k: v for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}; {FIX}")
    return metrics


def save_model(name: str, bundle_dir: Path, runtime_dir: Path, metadata: dict, trained_on: dict) -> bentoml.Model:
    """Copy the bundle's two files and its runtime's into a new version of model `name` in the model store,
    with the content hashes of the images it was trained and validated on (`trained_on`)."""
    labels = {"backbone": str(metadata["backbone"]), "runtime": metadata["runtime"]["name"],
              "source": "imgclf-pipeline"}
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for file in (WEIGHTS_FILE, META_FILE):
            shutil.copy2(bundle_dir / file, model.path_of(file))
        for file in (RUNTIME_JSON, metadata["runtime"]["file"]):
            if file:
                shutil.copy2(runtime_dir / file, model.path_of(file))
        write_training_images(trained_on, Path(model.path_of(TRAINED_ON_FILE)))
    return bentoml.models.get(model.tag)


def runtime_summary(runtime_dir: Path) -> dict:
    """The runtime the evaluate stage chose, why, and its test figures, for the model's metadata."""
    if not (runtime_dir / RUNTIME_JSON).is_file():
        raise UserError(f"{runtime_dir / RUNTIME_JSON} not found; {FIX}")
    chosen = read_runtime(runtime_dir)
    if chosen["file"] and not (runtime_dir / chosen["file"]).is_file():
        raise UserError(f"{runtime_dir / chosen['file']} not found; {FIX}")
    return {"name": chosen["runtime"], "file": chosen["file"] or "", "reason": chosen["reason"],  # BentoML: no None
            "figures": chosen["figures"][chosen["runtime"]], "pytorch": chosen["figures"]["torch"]}


def build_bento(model: bentoml.Model, labels: dict[str, str] | None = None) -> str:
    """`bentoml build` of service/ pinned to `model`, with `labels` added to the bentofile's; returns the tag."""
    env = {
        **os.environ,
        # The store the model has just gone to, even if BENTOML_HOME changed after this process
        # first touched BentoML (BentoML reads it once per process).
        "BENTOML_HOME": str(Path(model.path).parents[2]),
        "BENTOML_DO_NOT_TRACK": "True",
        "COLUMNS": "400",  # keep the printed tag on one line
    }
    env.pop("IMAGE_CLASSIFIER_MODEL", None)  # it would override the --arg below
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", BENTOFILE, "--arg", f"model={model.tag}", "-o", "tag"]
    cmd += [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
    cmd.append(".")
    done = subprocess.run(cmd, cwd=SOURCE_ROOT, env=env, capture_output=True, text=True)
    tags = [line.split("__tag__:", 1)[1].strip() for line in done.stdout.splitlines() if "__tag__:" in line]
    if done.returncode != 0 or not tags:
        raise RuntimeError(f"bentoml build failed (exit {done.returncode}):\n{(done.stderr or done.stdout)[-4000:]}")
    return tags[-1]


def run(params: Params, workdir: Path = Path(".")) -> dict:
    bundle_dir = workdir / MODEL_DIR
    meta = read_meta(bundle_dir)
    metrics = read_metrics(workdir / METRICS_JSON)
    for name in FITTED_SPLITS:
        if not (workdir / split_csv(name)).is_file():
            raise UserError(f"{workdir / split_csv(name)} not found; {FIX}")
    metadata = {
        "metrics": metrics,
        "weights_sha256": sha256(bundle_dir / WEIGHTS_FILE),
        "data_version": sha256(workdir / TRAIN_CSV),  # sha256 of data/split/train.csv
        "backbone": meta["backbone"],
        "labels": list(meta["labels"]),
        "image_size": int(meta["image_size"]),
        "lineage": collect_lineage(workdir, params),
        "runtime": runtime_summary(workdir / RUNTIME_DIR),
    }
    labels = {**bento_labels(metadata["lineage"], metrics), "runtime": metadata["runtime"]["name"]}

    trained_on = current_training_images(workdir)
    model = save_model(params.package.model_name, bundle_dir, workdir / RUNTIME_DIR, metadata, trained_on)
    bento_tag = build_bento(model, labels)
    packed = [str(m.tag) for m in bentoml.get(bento_tag).info.all_models]
    if str(model.tag) not in packed:
        raise RuntimeError(f"Bento {bento_tag} packs {packed}, not the model just saved ({model.tag})")

    report = {
        "model_tag": str(model.tag),
        "bento_tag": bento_tag,
        "bentoml_home": str(Path(model.path).parents[2]),
        "serve": f"bentoml serve {bento_tag}",
        "metadata": metadata,
        "bento_labels": labels,
    }
    (workdir / PACKAGE_JSON).parent.mkdir(parents=True, exist_ok=True)
    (workdir / PACKAGE_JSON).write_text(json.dumps(report, indent=2))
    return {"model": str(model.tag), "bento": bento_tag, "runtime": metadata["runtime"]["name"],
            **{k: metrics[k] for k in REQUIRED_METRICS}}


if __name__ == "__main__":
    run_stage("package", run)
