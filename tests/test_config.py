"""params.yaml validation: every mistake ends in one line that names the key and what is allowed."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from flows.settings import FlowParams
from tasks.common import cli
from tasks.common.config import Params, UserError, load_params, parse_params
from tasks.common.reads import UndeclaredRead, stage_view
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
        ("evaluate", {"runtime": "tensorrt"}, "evaluate.runtime: Input should be 'auto', 'torch', 'onnx' or"),
        ("inference", {"device": "tpu"}, "inference.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("ops", {"timezone": "Mars/Base"}, "ops.timezone: unknown time zone"),
        ("tune", {"trials": 0}, "tune.trials: Input should be greater than or equal to 1"),
        ("service", {"uncertain": {"margin": 2, "max_mb": 1, "days": 1}}, "service.uncertain.margin: Input should be"),
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


def test_each_reader_validates_its_own_sections():
    """The stages' Params leave ops, tune and service to the flows, the search and the service: a bad
    ops value stops a flow, never a stage; a section nobody owns still fails everywhere."""
    raw = project_params()
    raw["ops"]["timezone"] = "Mars/Base"
    params = parse_params(raw)
    assert isinstance(params, Params) and not hasattr(params, "ops")
    with pytest.raises(UserError, match="ops.timezone: unknown time zone"):
        parse_params(raw, model=FlowParams)
    with pytest.raises(UserError, match=r"^params.yaml: trian: unknown key"):
        parse_params({**project_params(), "trian": {}}, model=FlowParams)


def test_a_moved_key_is_read_from_its_old_place_with_one_line_once(capsys):
    raw = project_params()
    del raw["evaluate"]["runtime"], raw["inference"]["device"]
    raw["package"]["runtime"] = "torch"
    raw["train"]["device"] = "cpu"
    params = parse_params(raw, "old.yaml")
    assert params.evaluate.runtime == "torch" and params.inference.device == "cpu"
    notices = capsys.readouterr().err.strip().splitlines()
    assert notices == ["old.yaml: package.runtime is now evaluate.runtime; rename it (its value is used meanwhile)",
                       "old.yaml: inference.device is not set; scoring uses train.device (cpu) as before; "
                       "add inference.device"]
    parse_params(raw, "old.yaml")
    assert capsys.readouterr().err == ""  # once per process


def test_a_stage_reads_only_what_its_params_list():
    view = stage_view(make_params(), ["train", "inference.tta", "validate.min_width"], "train")
    assert view.train.lr == 0.002 and view.inference.tta == "none" and view.validate_.min_width == 8
    assert view.train.model_copy(update={"lr": 1.0}).lr == 1.0
    with pytest.raises(UndeclaredRead, match=r"^train reads inference.device of params.yaml, which its PARAMS "
                                             r"\(tasks/train.py\) do not list: add it there, then run `make deps`"):
        view.inference.device
    with pytest.raises(UndeclaredRead, match="train reads validate.model_dump"):
        view.validate_.model_dump()
    with pytest.raises(UndeclaredRead, match="train reads evaluate"):
        view.evaluate


PARAMS = ["split.seed"]  # what `read_too_much` below is allowed to read, as a stage module lists it


def read_too_much(params, workdir):
    return {"seed": params.split.seed, "root": params.data.root}


def test_the_stage_cli_fails_in_one_line_on_an_undeclared_read(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.run_stage("split", read_too_much, [])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("split: error: split reads data of params.yaml, which its PARAMS")
