"""The bundle's network in ONNX Runtime: the probabilities and embeddings PyTorch gives, on real images,
and one line when the exported file cannot be loaded."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tasks.common.config import UserError
from tasks.data.images import open_rgb
from tasks.model.bundle import load_bundle
from tasks.model.export import export_onnx, parity
from tasks.model.quantize import quantize_dynamic_int8, quantize_static_int8
from tasks.model.served import OnnxNetwork
from tests.serving import write_evaluated_bundle

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A fitted bundle, its ONNX export and its 16 training images, preprocessed."""
    workdir = tmp_path_factory.mktemp("export")
    write_evaluated_bundle(workdir, runtimes=False)
    bundle = load_bundle(workdir / "models")
    path = export_onnx(bundle, workdir / "models/model.onnx")
    images = [open_rgb(p) for p in sorted((workdir / "images").rglob("*.png"))]
    return bundle, path, bundle.preprocess(images)


def test_onnx_runtime_gives_pytorchs_probabilities_and_embeddings(exported):
    bundle, path, batch = exported

    figures = parity(bundle, OnnxNetwork(path), batch)

    assert figures["images"] == 16 and figures["top1_agreement"] == 1.0
    assert figures["max_probability_difference"] < 1e-4 and figures["max_embedding_difference"] < 1e-3


def test_one_image_at_a_time_and_test_time_augmentation_match_too(exported):
    bundle, path, batch = exported
    network = OnnxNetwork(path, threads=1)
    mirrored = dataclasses.replace(bundle, tta="hflip")

    assert parity(bundle, network, batch[:1])["max_probability_difference"] < 1e-4
    assert parity(mirrored, network, batch)["max_probability_difference"] < 1e-4


def test_a_truncated_onnx_file_is_one_line(exported, tmp_path: Path):
    _, path, _ = exported
    broken = tmp_path / "model.onnx"
    broken.write_bytes(path.read_bytes()[:2000])

    with pytest.raises(UserError) as err:
        OnnxNetwork(broken)

    message = str(err.value)
    assert message.startswith(f"{broken}: ONNX Runtime cannot load it (") and message.endswith("export it again")
    assert "\n" not in message


def test_static_int8_keeps_the_bundles_answers(exported, tmp_path: Path):
    bundle, path, batch = exported

    out = quantize_static_int8(path, tmp_path / "model-int8.onnx", calibration=batch)
    figures = parity(bundle, OnnxNetwork(out), batch)

    assert figures["top1_agreement"] == 1.0 and figures["max_probability_difference"] < 0.1
    assert out.stat().st_size < path.stat().st_size / 2  # int8 weights: a quarter, plus the graph


def test_dynamic_int8_runs_with_int8_weights(exported, tmp_path: Path):
    """Measured, not required to agree: ONNX Runtime's dynamic quantisation also turns convolutions
    into ConvInteger, which on this network moved probabilities by up to 0.38."""
    bundle, path, batch = exported

    out = quantize_dynamic_int8(path, tmp_path / "model-int8-dynamic.onnx")
    logits, features = OnnxNetwork(out).logits_and_features(batch)

    assert tuple(logits.shape) == (16, 2) and tuple(features.shape) == tuple(bundle.logits_and_features(batch)[1].shape)
    assert out.stat().st_size < path.stat().st_size / 2
