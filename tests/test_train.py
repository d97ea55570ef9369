"""The fine-tuning engine: strategies, seeds, resume, data parallelism, input paths, early stopping, what a run ships."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
import yaml
from safetensors.torch import load_file

from tasks import train
from tasks.common import paths
from tasks.common.code_deps import import_closure
from tasks.common.config import UserError
from tasks.data.splits import class_indices, read_split
from tasks.model.backbones import create_backbone, head_module, resolve_inputs
from tasks.model.bundle import WEIGHTS_FILE, load_bundle
from tasks.training import checkpoint
from tasks.training.batches import TensorBatches, epoch_order
from tasks.training.distributed import World
from tasks.training.image_cache import KEEP, image_cache, square_pixels
from tasks.training.optim import EarlyStopping, make_loss, sample_weights
from tasks.training.shipped import ShippedModel
from tasks.training.strategies import layer_groups, param_groups, set_trainable, trainable_groups
from tests.conftest import PROJECT_ROOT, make_params, write_splits

pytestmark = pytest.mark.training

NO_STOP = {"metric": "accuracy", "patience": 0, "min_delta": 0.0}
FAST = {"epochs": 2, "batch_size": 8, "image_size": 32, "early_stopping": NO_STOP}
FIGURES = ["train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "trainable_params"]


def train_params(**values):
    return make_params(train={**FAST, **values})


def history(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(workdir / train.HISTORY_CSV)


def bundle_tensors(workdir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(workdir / paths.MODEL_DIR / WEIGHTS_FILE))


@pytest.fixture
def splits(tmp_path: Path) -> Path:
    write_splits(tmp_path, {"train": 8, "val": 4})
    return tmp_path


def start_stage(workdir: Path, params, *launcher: str) -> subprocess.Popen:
    """`python -m tasks.train` (or under a launcher such as torchrun) in workdir, as DVC runs it."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json")))
    command = [*(launcher or [sys.executable]), "-m", "tasks.train"]
    return subprocess.Popen(command, cwd=workdir, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# --- strategies -------------------------------------------------------------------------------

def test_gradual_unfreezing_opens_groups_from_the_top_down():
    params = train_params(strategy="gradual", epochs=6, freeze_epochs=1, unfreeze_epochs=2)
    model = torchvision.models.resnet18(num_classes=3)
    groups = layer_groups(model)
    assert groups[-1] == ["fc.weight", "fc.bias"] and groups[0] == ["conv1.weight"]
    opened = []
    for epoch in range(1, 7):
        set_trainable(model, groups, trainable_groups(params.train, epoch, len(groups)))
        opened.append({name for name, p in model.named_parameters() if p.requires_grad})
    assert opened[0] == {"fc.weight", "fc.bias"}
    assert opened[0] < opened[1] < opened[2] < opened[3] == opened[4] == opened[5]
    assert "layer4.1.conv2.weight" in opened[1] and "conv1.weight" not in opened[2]
    assert opened[3] == {name for name, _ in model.named_parameters()}


def test_layer_decay_lowers_the_rate_group_by_group_and_spares_norms_from_decay():
    params = train_params(lr=0.01, layer_decay=0.5, weight_decay=0.05)
    model = torchvision.models.resnet18(num_classes=3)
    groups = param_groups(model, layer_groups(model), params.train)
    rates = {g["depth"]: g["lr"] for g in groups}
    assert rates[0] == 0.01 and rates[1] == 0.005 and rates[2] == 0.0025
    head = [g for g in groups if g["depth"] == 0]
    assert {g["weight_decay"] for g in head} == {0.05, 0.0}
    assert all(p.ndim == 1 for g in groups if g["weight_decay"] == 0.0 for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("strategy", ["linear_probe", "full", "gradual"])
def test_each_strategy_trains_what_it_should_when(splits, strategy):
    params = train_params(strategy=strategy, epochs=4, freeze_epochs=1, unfreeze_epochs=2, lr=0.01)
    summary = train.run(params, splits)
    trainable = list(history(splits)["trainable_params"])
    pretrained = create_backbone("tf_efficientnet_lite0", "imagenet", num_classes=3).model
    head = sum(p.numel() for p in head_module(pretrained).parameters())
    everything = sum(p.numel() for p in pretrained.parameters())
    saved = bundle_tensors(splits)
    backbone_moved = any(not torch.equal(saved[name], tensor) for name, tensor in pretrained.state_dict().items()
                         if not name.startswith("classifier"))
    if strategy == "linear_probe":
        assert trainable == [head] * 4 and summary["input"] == "features"
        assert not backbone_moved  # weights and normalization statistics exactly as pretrained
    elif strategy == "full":
        assert trainable == [everything] * 4 and backbone_moved
    else:
        assert trainable[0] == head and trainable[0] < trainable[1] < trainable[2] < trainable[3] == everything
        assert backbone_moved
    assert not torch.equal(saved["classifier.weight"], pretrained.state_dict()["classifier.weight"])
    assert load_bundle(splits / paths.MODEL_DIR).labels == ["cat", "dog", "fox"]


# --- reproducible, resumable --------------------------------------------------------------------

def test_two_runs_with_one_seed_match_and_another_seed_differs(tmp_path):
    runs = {}
    for name, seed in (("first", 1), ("second", 1), ("other", 2)):
        write_splits(tmp_path / name, {"train": 8, "val": 4})
        train.run(train_params(seed=seed), tmp_path / name)
        runs[name] = history(tmp_path / name)[FIGURES]
    pd.testing.assert_frame_equal(runs["first"], runs["second"])
    first, second = bundle_tensors(tmp_path / "first"), bundle_tensors(tmp_path / "second")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not runs["first"].equals(runs["other"])


@pytest.mark.slow(reason="trains 6 epochs twice, one run killed and resumed")
def test_a_killed_run_resumes_and_ends_where_an_unbroken_one_does(tmp_path, capsys):
    params = train_params(epochs=6, image_size=48, batch_size=4)
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    for workdir in (unbroken, broken):
        write_splits(workdir, {"train": 12, "val": 4})
    train.run(params, unbroken)

    process = start_stage(broken, params)
    last = broken / checkpoint.CHECKPOINT_DIR / checkpoint.LAST
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if last.is_file() and torch.load(last, weights_only=True)["epoch"] >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert process.wait() == -signal.SIGKILL, process.stdout.read()
    done = torch.load(last, weights_only=True)["epoch"]
    assert 2 <= done < 6 and not (broken / train.SUMMARY_JSON).exists()

    resumed = start_stage(broken, params)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming from checkpoints/last.pt: epoch {done} of 6 done" in output
    pd.testing.assert_frame_equal(history(broken)[FIGURES], history(unbroken)[FIGURES], atol=1e-4)
    a, b = bundle_tensors(broken), bundle_tensors(unbroken)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)

    # Other params (another fingerprint) start afresh: no resuming, and the new learning rate shows.
    again = train_params(epochs=6, image_size=48, batch_size=4, lr=0.001)
    capsys.readouterr()
    train.run(again, broken)
    assert "resuming" not in capsys.readouterr().out
    assert list(history(broken)["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert history(broken)["lr"].max() < history(unbroken)["lr"].max()


def test_the_fingerprint_covers_the_code_training_runs_and_a_broken_checkpoint_is_reported(tmp_path, capsys):
    code = {f.relative_to(PROJECT_ROOT).as_posix() for f in import_closure([checkpoint.TRAIN_STAGE])}
    assert {"tasks/train.py", "tasks/training/loop.py", "tasks/training/step.py", "tasks/data/images.py",
            "tasks/common/config.py"} <= code
    assert "tasks/evaluate.py" not in code and "tasks/monitoring/drift.py" not in code

    (tmp_path / "last.pt").write_bytes(b"half a checkpoint")
    assert checkpoint.resumable(tmp_path, "any") is None
    err = capsys.readouterr().err
    assert "last.pt cannot be read" in err and "starting afresh" in err


def test_training_batches_keep_the_drawn_order_for_mixup_neighbours():
    # Rows of a CPU tensor are read in ascending order, but each batch arrives in the drawn random
    # order: MixUp and CutMix mix neighbours, so a sorted batch would mix mostly within one class.
    data = torch.arange(40).view(40, 1)
    batches = TensorBatches(data, torch.arange(40), 8, torch.device("cpu"), World(), lambda x, g: x, train=True)
    drawn = epoch_order(40, torch.Generator().manual_seed(3), World())
    got = torch.cat([targets for _, targets in batches.batches(torch.Generator().manual_seed(3))])
    assert torch.equal(got, drawn) and not torch.equal(got[:8], got[:8].sort().values)
    rows = torch.cat([inputs for inputs, _ in batches.batches(torch.Generator().manual_seed(3))])
    assert torch.equal(rows.view(-1), drawn)  # images travel with their labels


def test_epoch_order_shards_are_disjoint_and_equal_in_length():
    generator = torch.Generator().manual_seed(0)
    shards = [epoch_order(25, generator.manual_seed(0), World(rank, 2, rank)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 12 and not set(shards[0].tolist()) & set(shards[1].tolist())
    evaluation = [epoch_order(25, None, World(rank, 2, rank)) for rank in (0, 1)]
    assert sorted(evaluation[0].tolist() + evaluation[1].tolist()) == list(range(25))


# --- inputs ------------------------------------------------------------------------------------

def test_image_cache_decodes_once_per_dataset_version(tmp_path):
    write_splits(tmp_path, {"train": 2})
    files = sorted((tmp_path / "images").rglob("*.png"))
    cache_dir = tmp_path / "cache"
    pixels = image_cache(files, 20, cache_dir)
    assert pixels.shape == (6, 20, 20, 3) and (pixels[3] == square_pixels(files[3], 20)).all()
    built = list(cache_dir.iterdir())
    assert len(built) == 1
    inode = built[0].stat().st_ino
    image_cache(files, 20, cache_dir)
    assert built[0].stat().st_ino == inode  # opened, not rebuilt (a build renames a new file into place)
    os.utime(files[0], ns=(0, 0))  # a changed file is a new dataset version
    image_cache(files, 20, cache_dir)
    assert len(list(cache_dir.iterdir())) == 2
    for side in range(21, 21 + KEEP):  # only the most recently used caches stay
        image_cache(files, side, cache_dir)
    assert sorted(f.name.split("_")[1] for f in cache_dir.iterdir()) == sorted(f"{s}px.u8" for s in range(21, 27))


def test_input_path_follows_the_augmentation(splits):
    assert train.run(train_params(epochs=1), splits)["input"] == "cache"
    per_image = make_params(train={**FAST, "epochs": 1, "augment": {
        **make_params().train.augment.model_dump(), "auto_augment": "trivial"}})
    assert train.run(per_image, splits)["input"] == "loader"
    forced = make_params(train={**per_image.train.model_dump(), "input": "cache"})
    with pytest.raises(UserError, match="train.input: cache augments whole batches, which auto_augment cannot do"):
        train.run(forced, splits)


# --- optimisation details ----------------------------------------------------------------------

def test_early_stopping_keeps_the_best_epoch(splits):
    never_better = {"metric": "loss", "patience": 1, "min_delta": 100.0}  # only epoch 1 counts as a gain
    summary = train.run(train_params(epochs=5, early_stopping=never_better), splits)
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1
    best = torch.load(splits / checkpoint.CHECKPOINT_DIR / checkpoint.BEST, weights_only=True)
    saved = bundle_tensors(splits)
    assert best["epoch"] == 1
    assert all(torch.equal(saved[k], v) for k, v in best["model"].items() if "running" not in k and "batches" not in k)


def test_early_stopping_counts_epochs_without_gain():
    stopper = EarlyStopping("accuracy", patience=2, min_delta=0.01)
    gains = [stopper.improved(v, e) for e, v in enumerate([0.5, 0.6, 0.605, 0.6], start=1)]
    assert gains == [True, True, False, False] and stopper.best_epoch == 2 and stopper.should_stop(4)


def test_imbalance_weights_the_loss_or_the_sampling():
    targets = torch.tensor([0] * 30 + [1] * 10)
    weighted = make_loss(train_params(imbalance="weighted_loss").train, targets, 2, torch.device("cpu"))
    assert torch.allclose(weighted.weight, torch.tensor([40 / 60, 40 / 20]))
    assert make_loss(train_params(imbalance="none").train, targets, 2, torch.device("cpu")).weight is None
    weights = sample_weights(train_params(imbalance="balanced_sampling").train, targets)
    drawn = epoch_order(40_000, torch.Generator().manual_seed(0), World(), torch.cat([weights] * 1000))
    share = (torch.cat([targets] * 1000)[drawn] == 1).float().mean().item()
    assert 0.48 < share < 0.52


def test_ema_weights_are_the_ones_saved(tmp_path):
    for name, decay in (("plain", 0.0), ("ema", 0.9)):
        write_splits(tmp_path / name, {"train": 8, "val": 4})
        train.run(train_params(ema_decay=decay), tmp_path / name)
    plain, ema = bundle_tensors(tmp_path / "plain"), bundle_tensors(tmp_path / "ema")
    assert not torch.equal(plain["classifier.weight"], ema["classifier.weight"])
    assert history(tmp_path / "ema")["val_loss"].notna().all()


def test_the_shipped_weights_are_the_judged_ones_of_the_best_or_the_last_epoch(splits):
    never_better = {"metric": "loss", "patience": 0, "min_delta": 100.0}  # epoch 1 is the best of 3
    cfg = resolve_inputs(train_params(epochs=3, ema_decay=0.9, early_stopping=never_better).train)
    train_df, val_df = read_split(splits, "train"), read_split(splits, "val")
    labels, ckpt_dir = ["cat", "dog", "fox"], splits / checkpoint.CHECKPOINT_DIR

    def ship(select: str) -> ShippedModel:  # the second call resumes the finished run from its checkpoint
        return ShippedModel.fit(cfg, splits, World(), train_df, val_df, labels, "run", ckpt_dir, select=select)

    best, last = ship("best").model.state_dict(), ship("last")
    saved_best = torch.load(ckpt_dir / checkpoint.BEST, weights_only=True)
    saved_last = torch.load(ckpt_dir / checkpoint.LAST, weights_only=True)
    weights = [k for k in best if "running" not in k and "batches" not in k]  # BatchNorm statistics are refreshed
    assert saved_best["epoch"] == 1 and saved_last["epoch"] == 3
    assert all(torch.equal(best[k].cpu(), saved_best["model"][k]) for k in weights)
    shipped_last = last.model.state_dict()
    assert all(torch.equal(shipped_last[k].cpu(), saved_last["ema"][f"module.{k}"]) for k in weights)  # the EMA copy
    assert not torch.equal(shipped_last["classifier.weight"].cpu(), saved_last["model"]["classifier.weight"])
    assert not torch.equal(shipped_last["classifier.weight"], best["classifier.weight"])

    probs = last.probabilities(val_df.assign(label="unseen"))  # labels are not read
    assert probs.shape == (len(val_df), 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    score = last.score(val_df)
    assert score["acc"] == pytest.approx(float((probs.argmax(1) == class_indices(val_df, labels)).mean()))
    assert last.features(val_df).shape[0] == len(val_df)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": "big"}, "train.batch_size: must be auto"),
        ({"batch_size": 0}, "train.batch_size: must be auto"),
        ({"strategy": "gradual", "epochs": 3, "freeze_epochs": 1, "unfreeze_epochs": 2},
         "freeze_epochs \\+ unfreeze_epochs must be below epochs"),
        ({"strategy": "partial"}, "train.strategy: Input should be 'linear_probe', 'full' or 'gradual'"),
        ({"layer_decay": 1.5}, "train.layer_decay: Input should be less than or equal to 1"),
        ({"early_stopping": {**NO_STOP, "metric": "auc"}}, "train.early_stopping.metric: Input should be"),
    ],
)
def test_bad_train_params_fail_with_one_line(values, message):
    with pytest.raises(UserError, match=message):
        train_params(**values)


def test_auto_image_size_and_crop_come_from_the_backbone():
    timm_cfg = resolve_inputs(train_params(image_size="auto", eval_crop_pct="auto").train)
    assert (timm_cfg.image_size, timm_cfg.eval_crop_pct) == (224, 0.875)  # tf_efficientnet_lite0
    torchvision_cfg = resolve_inputs(train_params(backbone="resnet18", image_size="auto").train)
    assert (torchvision_cfg.image_size, torchvision_cfg.eval_crop_pct) == (224, 1.0)  # explicit crop kept
    with pytest.raises(UserError, match="train.image_size: must be auto"):
        train_params(image_size=8)


def test_sgd_with_one_cycle_trains_and_checkpoints(splits):
    train.run(train_params(optimizer="sgd", schedule="onecycle", lr=0.05, epochs=3, warmup_epochs=1), splits)
    rates = list(history(splits)["lr"])
    assert rates[2] < rates[0] < 0.05 + 1e-9  # annealed after the warm-up peak
    state = torch.load(splits / checkpoint.CHECKPOINT_DIR / checkpoint.LAST, weights_only=True)
    assert state["finished"] and state["epoch"] == 3 and "momentum_buffer" in str(state["optimizer"])
