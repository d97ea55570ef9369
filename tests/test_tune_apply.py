"""A study's best values written back into params.yaml: only the lines of the values that changed differ,
each keeping its comment, and `dvc exp run -S` gets the same values from set_arguments."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tasks.tuning.apply import apply_values, set_arguments
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.training

BEST = {"train.lr": 0.0012345678, "train.strategy": "gradual", "train.epochs": 7,
        "train.augment.mixup_alpha": 0.2, "train.augment.color_jitter.hue": 1e-05}
# Each changed line, as it must read afterwards: the comment stays at its column (none on epochs).
CHANGED = {
    "  lr: 0.002                    # peak learning rate": "  lr: 0.001235                 # peak learning rate",
    "  strategy: full               # linear_probe": "  strategy: gradual            # linear_probe",
    "  epochs: 5": "  epochs: 7",
    "    mixup_alpha: 0.0           # MixUp": "    mixup_alpha: 0.2           # MixUp",
    "      hue: 0.0                 # hue shift": "      hue: 1.0e-05             # hue shift",
}


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copyfile(PROJECT_ROOT / "params.yaml", path)
    return path


def _lookup(data: dict, dotted: str) -> object:
    for key in dotted.split("."):
        data = data[key]
    return data


def test_nothing_to_apply_leaves_the_file_byte_identical(params: Path):
    original = params.read_bytes()
    assert apply_values(params, {}) == []
    assert apply_values(params, {"train.weight_decay": 0.01, "train.seed": 42, "train.lr": 0.0020000001}) == []
    assert params.read_bytes() == original


def test_only_the_changed_lines_differ_and_keep_their_comments(params: Path):
    before = params.read_text().splitlines()
    changes = apply_values(params, BEST)
    after = params.read_text().splitlines()

    assert changes == ["train.lr: 0.002 -> 0.001235", "train.strategy: full -> gradual", "train.epochs: 5 -> 7",
                       "train.augment.mixup_alpha: 0.0 -> 0.2", "train.augment.color_jitter.hue: 0.0 -> 1.0e-05"]
    assert len(after) == len(before)
    differing = {old: new for old, new in zip(before, after) if old != new}
    assert len(differing) == len(CHANGED)
    for old_start, new_start in CHANGED.items():
        [(old, new)] = [(o, n) for o, n in differing.items() if o.startswith(old_start)]
        assert new.startswith(new_start)
        assert new[len(new_start):] == old[len(old_start):]  # the rest of the comment, untouched

    loaded = yaml.safe_load(params.read_text())
    assert {key: _lookup(loaded, key) for key in BEST} == {
        "train.lr": 0.001235, "train.strategy": "gradual", "train.epochs": 7,
        "train.augment.mixup_alpha": 0.2, "train.augment.color_jitter.hue": 1e-05}
    assert loaded["labels"]["strategy"] == "full" and loaded["labels"]["epochs"] == 6  # same keys, other section
    assert apply_values(params, BEST) == []  # applied already: nothing left to change


def test_a_longer_value_pushes_its_comment_right_by_one_space(params: Path):
    assert apply_values(params, {"train.backbone": "convnext_small.fb_in22k_ft_in1k"}) == [
        "train.backbone: tf_efficientnet_lite0 -> convnext_small.fb_in22k_ft_in1k"]
    assert "  backbone: convnext_small.fb_in22k_ft_in1k # any timm model name" in params.read_text()


def test_strings_that_yaml_would_misread_are_quoted(params: Path):
    apply_values(params, {"train.imbalance": "yes", "train.rendezvous": "host:29500", "train.compile": True})
    loaded = yaml.safe_load(params.read_text())["train"]
    assert (loaded["imbalance"], loaded["rendezvous"], loaded["compile"]) == ("yes", "host:29500", True)
    assert "  imbalance: 'yes'             # none | weighted_loss" in params.read_text()  # comment column kept


def test_a_key_without_a_scalar_on_its_line_is_refused_and_the_file_left_alone(params: Path):
    original = params.read_bytes()
    with pytest.raises(ValueError, match="not a scalar"):
        apply_values(params, {"train.lr": 0.005, "train.augment": 0.5})
    assert params.read_bytes() == original
    assert [p.name for p in params.parent.iterdir()] == ["params.yaml"]  # no temp file left behind


def test_crlf_line_endings_and_quoted_values_are_kept(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"train:\r\n  name: 'a # b'   # quoted\r\n  lr: 0.1\r\n")
    assert apply_values(path, {"train.name": "c", "train.lr": 0.2}) == ["train.name: 'a # b' -> c",
                                                                     "train.lr: 0.1 -> 0.2"]
    assert path.read_bytes() == b"train:\r\n  name: c         # quoted\r\n  lr: 0.2\r\n"


def test_set_arguments_give_dvc_the_same_values(params: Path):
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import parse_yaml

    arguments = set_arguments(BEST)
    assert arguments == ["-S", "train.lr=0.001235", "-S", "train.strategy=gradual", "-S", "train.epochs=7",
                         "-S", "train.augment.mixup_alpha=0.2", "-S", "train.augment.color_jitter.hue=1.0e-05"]
    by_dvc = params.parent / "by_dvc.yaml"
    shutil.copyfile(params, by_dvc)
    apply_overrides(by_dvc, arguments[1::2])  # what `dvc exp run -S` does to params.yaml
    apply_values(params, BEST)
    # Compared as DVC reads params (YAML 1.2): DVC writes 1e-05 back without the dot PyYAML needs
    assert parse_yaml(by_dvc.read_text(), by_dvc) == parse_yaml(params.read_text(), params)
