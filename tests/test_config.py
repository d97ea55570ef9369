"""params.yaml validation: every mistake ends in one line that names the key and what is allowed."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from tasks.common.config import UserError, load_params, parse_params
from tests.conftest import PROJECT_ROOT, make_params

pytestmark = pytest.mark.pipeline


def project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def test_project_params_are_valid():
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.train.backbone == "tf_efficientnet_lite0"
    assert params.validate_.min_images_per_class >= 1


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        ("train", {"epochs": "three"}, "train.epochs: Input should be a valid integer"),
        ("train", {"epochs": 0}, "train.epochs: Input should be greater than or equal to 1"),
        ("train", {"epoch": 3}, "train.epoch: unknown key"),
        ("train", {"device": "tpu"}, "train.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("split", {"val": 0.5, "test": 0.45}, "val + test must be below 0.9"),
        ("validate", {"warn_only": ["decodable", "nonsense"]}, "validate.warn_only.1"),
        ("package", {"model_name": "Bad Name"}, "package.model_name: String should match pattern"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(section, values, expected):
    with pytest.raises(UserError) as info:
        make_params(**{section: values})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_section_and_unknown_section():
    raw = project_params()
    del raw["train"]
    with pytest.raises(UserError, match=r"params.yaml: train: Field required"):
        parse_params(raw)
    raw = {**project_params(), "trian": {}}
    with pytest.raises(UserError, match=r"trian: unknown key"):
        parse_params(raw)


def test_missing_and_malformed_params_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)


def test_stage_cli_prints_one_line_and_exits_2(tmp_path):
    """A stage run by DVC with a bad params value: exit 2, one line on stderr, no traceback."""
    raw = project_params()
    raw["split"]["seed"] = "forty-two"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "tasks.split"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["split: error: params.yaml: split.seed: Input should be a valid integer, unable to parse "
                     "string as an integer (got 'forty-two')"]


def test_stage_cli_names_the_missing_input(tmp_path):
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "tasks.train"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "data/split/train.csv not found; run the split stage first" in proc.stderr
    assert "Traceback" not in proc.stderr
