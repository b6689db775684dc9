"""search.describe and `python -m search.predict`: any network as layer descriptors (a torch module, an ONNX file, a
.tflite file, a named family built without weights), and the target's prediction for it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from search import describe, latency
from search.describe import DescribeError
from tests.cli import command

# Published MMACs of the families at width 1.0 and 224 px (MobileNetV1 0.25 at 128 px too): TF-slim's
# mobilenet_v1.md, the MobileNetV2 and V3 papers, torchvision's docs for MnasNet-B1.
PUBLISHED = [("mobilenet_v1", 1.0, 224, 569), ("mobilenet_v1", 0.25, 128, 14), ("mobilenet_v2", 1.0, 224, 300),
             ("mobilenet_v3_large", 1.0, 224, 217), ("mobilenet_v3_small", 1.0, 224, 56), ("mnasnet", 1.0, 224, 315)]


@pytest.mark.parametrize("name,width,resolution,mmacs", PUBLISHED)
def test_a_built_family_has_its_published_macs(name, width, resolution, mmacs):
    layers = describe.built(name, width, resolution)
    assert sum(layer.macs for layer in layers) / 1e6 == pytest.approx(mmacs, abs=0.5 + 0.01 * mmacs)  # published: whole MMACs
    assert layers[0].in_shape == (3, resolution, resolution) and layers[-1].kind == "linear"


def test_residual_adds_are_read_from_the_graph_not_guessed_from_shapes():
    """MobileNetV1 has blocks whose input and output shapes match but no skip: the shape guess counts four adds,
    the graph none. MobileNetV2 has ten."""
    v1 = describe.built("mobilenet_v1", 1.0, 224)
    assert latency.residual_blocks(v1) == []
    guessed = [layer.__class__(**{**vars(layer), "residual": None}) for layer in v1]
    assert len(latency.residual_blocks(guessed)) == 4
    v2 = describe.built("mobilenet_v2", 1.0, 224)
    blocks = latency.residual_blocks(v2)
    assert len(blocks) == 10 and all(v2[first].in_shape == v2[last].out_shape for first, last in blocks)


def test_the_project_predictor_gives_a_breakdown_that_sums_to_its_prediction():
    predictor = latency.Predictor.load(Path(__file__).resolve().parents[1] / "conf" / "predictors" / "snapdragon665.json")
    layers = describe.built("mobilenet_v2", 0.5, 160)
    rows = predictor.breakdown(layers)
    assert sum(ms for _, _, ms in rows) == pytest.approx(predictor.predict(layers))
    assert [name for name, _, _ in rows[:len(layers)]] == [layer.name for layer in layers]


@pytest.mark.parametrize("model,message", [
    ("missing.onnx", "model: no file missing.onnx"),
    ("network.pt", r"model: network.pt: a \.pt file cannot be read"),
    ("resnet50", "model: 'resnet50' is none of"),
])
def test_what_cannot_be_described_is_one_line_naming_it(model, message):
    with pytest.raises(DescribeError, match=message):
        describe.describe(model)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_a_file_that_is_not_a_model_is_named(tmp_path, suffix):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"not a model")
    with pytest.raises(DescribeError, match=str(bad)):
        describe.describe(str(bad))


@pytest.mark.slow  # exports a network to both formats (seconds each)
def test_a_network_reads_the_same_from_torch_onnx_and_tflite(tmp_path):
    """The project's own exports (what promote ships), read back: the same layers, shapes and precisions as the
    space describes (a stride on a 1 x 1 map is not in a .tflite's shapes, and costs nothing)."""
    import torch

    from search.backends import litert
    from search.backends import onnx as onnx_backend
    from spaces import Candidate
    from tests.test_export import INPUT, build, make_space, sampled, train
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    d = load_digits()
    x = (d.images[:, None] / 16.0).astype("float32")
    digits = {"x": x[:1000], "y": d.target[:1000]}
    space = make_space("channel")
    c = sampled(space, 5, **{f"bits.{n}": (8, 32)[i % 2] for i, n in enumerate(space.layer_names)})
    net = build(space, c, train(space, digits, steps=20), digits)
    want = [(l.kind, l.in_shape, l.out_shape, l.kernel, l.groups, l.bits) for l in space.layers(c)]
    for layers in (describe.from_module(net, INPUT),
                   describe.describe(str(onnx_backend.export(net, INPUT, tmp_path / "m.onnx"))),
                   describe.describe(str(litert.export(net, INPUT, tmp_path / "m.tflite")))):
        assert [(l.kind, l.in_shape, l.out_shape, l.kernel, l.groups, l.bits) for l in layers] == want
    assert isinstance(c, Candidate)


@pytest.mark.slow  # runs the command
def test_predict_prints_the_prediction_the_breakdown_and_the_domain(tmp_path):
    done = command(tmp_path, "search.predict", "target=snapdragon665", "model=mobilenet_v2", "width=0.35",
                   "resolution=96")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["target"] == "snapdragon665" and out["latency_ms"] > 0
    assert any(r.startswith("network MACs 11.9M below") for r in out["extrapolated"])  # the smallest timed: 13.6M
    assert "features.1.conv.0.0" in done.stdout and "residual adds" in done.stdout
    inside = command(tmp_path, "search.predict", "model=mobilenet_v2", "layers=false")
    assert "inside the calibrated domain" in inside.stdout and json.loads(inside.stdout.splitlines()[-1])["extrapolated"] == []
    bad = command(tmp_path, "search.predict", "model=missing.tflite")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: model: no file missing.tflite"
