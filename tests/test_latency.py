"""Latency predictors (search/latency.py): the features a layer list turns into, the robust
non-negative fit (recovers a known linear model, shrugs off outliers a least-squares fit chases),
precision and sparsity awareness, the JSON predictor file, `for_target`'s checks against the
target's YAML, and the held-out report."""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

import spaces
from search import fitting, latency
from search.calibrate import calibration_set
from search.config import compose, resolve
from search.errors import UserError
from search.fitting import fit
from search.latency import Predictor, Report, declared, features, for_target, kernel_class
from spaces import Candidate, Layer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "conf" / "predictors" / "snapdragon665.json"
MB_CONF = yaml.safe_load((ROOT / "conf" / "space" / "mobilenetv2.yaml").read_text())

FB = spaces.create("fbnet")
FP32 = {32: "fp32"}
# The snapdragon665 / host kernel table, restricted to the bit-widths mobilenetv2 offers.
MB_KERNELS = {4: "dequant_fp32", 8: "int8", 16: "dequant_fp32", 32: "fp32"}


def mobilenet(**overrides):
    return spaces.create(**MB_CONF | {"input_shape": (1, 28, 28), "num_classes": 10} | overrides)


class RandomTrial:
    """Independent uniform draws per choice (what Optuna's RandomSampler does), seeded."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return self.rng.choice(list(choices))


def random_networks(space, n: int, seed: int, exclude=()) -> list[Candidate]:
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        c = space.sample(RandomTrial(rng))
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


# A known, non-negative "true" model: every kernel class costs MACs, activation traffic, weights
# and a dispatch cost per layer, every residual add a fixed and a per-element cost, plus a
# per-network constant (fbnet's one layout change, before the classifier, is part of it).
TRUE = {"network": 2.0, "residual.fp32.count": 0.2, "residual.fp32.activations": 5.0,
        "layout.any.count": 0.0, "layout.any.activations": 0.0}
for _cls, _f in (("dense", 1.0), ("grouped", 1.3), ("depthwise3", 2.0), ("depthwise5", 2.5)):
    TRUE |= {f"{_cls}.fp32.macs": 0.1 * _f, f"{_cls}.fp32.activations": 3.0 * _f,
             f"{_cls}.fp32.weights": 0.4 * _f, f"{_cls}.fp32.layers": 0.15 * _f}


def true_latency(layers, kernels=FP32) -> float:
    return sum(TRUE[k] * v for k, v in features(layers, kernels, False).items())


def rel_errors(predicted, measured) -> np.ndarray:
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    return np.abs(p - m) / m


# --- features ------------------------------------------------------------------------------------

PW = Layer("pw", "conv", (16, 8, 8), (32, 8, 8), 1, 1, 1, 32)  # dense 1x1, fp32
DW = Layer("dw", "conv", (32, 8, 8), (32, 4, 4), 3, 2, 32, 8)  # depthwise 3x3 stride 2, int8
GR = Layer("gr", "conv", (32, 4, 4), (64, 4, 4), 1, 1, 2, 8)  # grouped (2 groups) 1x1, int8
FC = Layer("fc", "linear", (64, 1, 1), (10, 1, 1), 1, 1, 1, 32)  # linear, fp32
KERNELS_8_32 = {8: "int8", 32: "fp32"}


def test_kernel_classes():
    assert [kernel_class(x) for x in (PW, DW, GR, FC)] == ["dense", "depthwise3", "grouped", "dense"]
    assert kernel_class(Layer("dw5", "conv", (8, 4, 4), (8, 4, 4), 5, 1, 8)) == "depthwise5"
    assert kernel_class(Layer("k3", "conv", (8, 4, 4), (8, 4, 4), 3, 1, 1)) == "dense"  # dense 3x3


def test_features_are_the_hand_computed_sums():
    f = features([PW, DW, GR, FC], KERNELS_8_32, sparse_kernels=False)
    # pw: 32*16 = 512 weights, x 8*8 = 32768 MACs, 16*64 + 32*64 = 3072 activations
    # fc: 10*64 = 640 weights = MACs, 64 + 10 = 74 activations (shares the dense fp32 class)
    # dw: 32*1*9 = 288 weights, x 4*4 = 4608 MACs, 32*64 + 32*16 = 2560 activations
    # gr: 64*(32/2) = 1024 weights, x 16 = 16384 MACs, 32*16 + 64*16 = 1536 activations
    expected = {
        "network": 1.0,
        "dense.fp32.macs": (32768 + 640) / 1e6, "dense.fp32.activations": (3072 + 74) / 1e6,
        "dense.fp32.weights": (512 + 640) / 1e6, "dense.fp32.layers": 2.0,
        "depthwise3.int8.macs": 4608 / 1e6, "depthwise3.int8.activations": 2560 / 1e6,
        "depthwise3.int8.weights": 288 / 1e6, "depthwise3.int8.layers": 1.0,
        # gr's output goes to a float layer, so it runs dequantized (int8 storage) + a float kernel
        "grouped.dequant8.macs": 16384 / 1e6, "grouped.dequant8.activations": 1536 / 1e6,
        "grouped.dequant8.weights": 1024 / 1e6, "grouped.dequant8.layers": 1.0,
        # layout changes: out of the float run and into the integer one (input 32*8*8, twice), out
        # of the integer run (input 32*4*4); the linear layer runs in neither
        "layout.any.count": 3.0, "layout.any.activations": (2 * 2048 + 512) / 1e6,
    }
    assert f.keys() == expected.keys()
    for key, value in expected.items():
        assert f[key] == pytest.approx(value, rel=1e-12, abs=0), key


def test_features_separate_how_layers_of_one_class_run():
    pw8 = dataclasses.replace(PW, bits=8)
    f = features([PW, pw8, pw8], KERNELS_8_32, False)  # the last int8 layer writes the float output
    assert f["dense.fp32.macs"] == f["dense.int8.macs"] == f["dense.dequant8.macs"] == pytest.approx(32768 / 1e6)
    assert f["dense.fp32.layers"] == f["dense.int8.layers"] == f["dense.dequant8.layers"] == 1.0
    assert features([], KERNELS_8_32, False) == {"network": 1.0}


MB_HOST = {4: "dequant_fp32", 8: "int8", 16: "dequant_fp32", 32: "fp32"}


@pytest.mark.parametrize("after, run, alone", [
    (8, "int8", "dequant8"), (4, "int8", "dequant4"), (16, "dequant8", "dequant16"), (32, "dequant8", "fp32")])
def test_an_int8_layer_runs_an_integer_kernel_only_into_8_bit_integer_input(after, run, alone):
    """Its output must stay quantized: onnxruntime fuses DequantizeLinear -> Conv -> QuantizeLinear
    into QLinearConv only when the next layer reads 8-bit (or narrower) integers."""
    pw8, nxt = dataclasses.replace(PW, bits=8), dataclasses.replace(PW, bits=after)
    assert latency.execution([pw8, nxt], MB_HOST)[0] == run
    assert latency.execution([nxt], MB_HOST) == [alone]  # a last layer writes the float output


def block(bits: list[int], channels: int = 8) -> list[Layer]:
    """An inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) whose output is added
    to its input, between a layer before it and one after it."""
    c, h = channels, 4 * channels
    shapes = [((c, 4, 4), (c, 4, 4), 1, 1), ((c, 4, 4), (h, 4, 4), 1, 1), ((h, 4, 4), (h, 4, 4), 3, h),
              ((h, 4, 4), (c, 4, 4), 1, 1), ((c, 4, 4), (c, 4, 4), 1, 1)]
    return [Layer(f"l{i}", "conv", a, b, k, 1, g, bits[i]) for i, (a, b, k, g) in enumerate(shapes)]


def test_a_residual_add_needs_every_layer_around_it_int8_for_integer_kernels():
    assert latency.residual_blocks(block([8] * 5)) == [(1, 3)]
    assert latency.execution(block([8] * 5), MB_HOST) == ["int8"] * 4 + ["dequant8"]
    # the layer after the add reads 4-bit input: enough for a plain edge, not around an add
    runs = latency.execution(block([8, 8, 8, 8, 4]), MB_HOST)
    assert runs == ["dequant8", "int8", "int8", "dequant8", "dequant4"]
    f = features(block([8] * 5), MB_HOST, False)
    assert f["residual.int8.count"] == 1.0 and f["residual.int8.activations"] == pytest.approx(128 / 1e6)
    assert features(block([32] * 5), MB_HOST, False)["residual.fp32.count"] == 1.0
    assert features(block([32, 32, 32, 32, 8]), MB_HOST, False)["residual.fp32.count"] == 1.0
    assert features(block([8, 32, 32, 4, 32]), MB_HOST, False)["residual.float.count"] == 1.0
    strided = block([32] * 5)
    strided[2] = dataclasses.replace(strided[2], stride=2, out_shape=(32, 2, 2))
    assert latency.residual_blocks(strided) == []


def test_residual_blocks_are_the_fbnet_blocks_with_a_skip():
    """fbnet adds a block's input to its output exactly when channels and stride stay the same."""
    for candidate in random_networks(FB, 20, seed=7):
        layers = FB.layers(candidate)
        found = {layers[last].name.split(".")[0] for _, last in latency.residual_blocks(layers)}
        named = {x.name: x for x in layers}
        assert found == {b for b in FB.block_names if f"{b}.dw" in named and named[f"{b}.dw"].stride == 1
                         and named[f"{b}.expand"].in_shape[0] == named[f"{b}.project"].out_shape[0]}
        assert found  # every network of the space has some


@pytest.mark.parametrize("sparse_kernels", [False, True])
def test_unstructured_sparsity_scales_macs_and_weights_only_with_sparse_kernels(sparse_kernels):
    dense = features([PW], KERNELS_8_32, sparse_kernels)
    sparse = features([dataclasses.replace(PW, sparsity=0.75, granularity="weight")], KERNELS_8_32, sparse_kernels)
    channel = features([dataclasses.replace(PW, sparsity=0.75, granularity="channel")], KERNELS_8_32, sparse_kernels)
    density = 0.25 if sparse_kernels else 1.0
    assert sparse["dense.fp32.macs"] == pytest.approx(dense["dense.fp32.macs"] * density, rel=1e-12)
    assert sparse["dense.fp32.weights"] == pytest.approx(dense["dense.fp32.weights"] * density, rel=1e-12)
    assert sparse["dense.fp32.activations"] == dense["dense.fp32.activations"]
    assert sparse["dense.fp32.layers"] == dense["dense.fp32.layers"] == 1.0
    # channel sparsity is already in the shapes: never scaled again
    assert channel == dense


# --- fit -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fbnet_data():
    train = calibration_set(FB, 60, seed=1)
    test = random_networks(FB, 200, seed=2, exclude=train)
    train_layers, test_layers = [FB.layers(c) for c in train], [FB.layers(c) for c in test]
    return (train_layers, np.array([true_latency(x) for x in train_layers]),
            test_layers, np.array([true_latency(x) for x in test_layers]))


def test_fit_recovers_a_known_linear_model(fbnet_data):
    train, y, test, y_test = fbnet_data
    coefficients = fit(train, y, FP32, False)
    assert coefficients.keys() == {k for k in TRUE if not k.startswith("layout.")}  # one precision: not fitted
    assert all(c >= 0 for c in coefficients.values())
    predictor = Predictor("t", FP32, False, coefficients)
    predicted = [predictor.predict(x) for x in test]
    assert rel_errors(predicted, y_test).max() < 0.01
    assert spearmanr(predicted, y_test).statistic > 0.99


def test_fit_is_robust_to_outliers_where_least_squares_is_not(fbnet_data):
    train, y, test, y_test = fbnet_data
    corrupted = y.copy()
    bad = np.random.default_rng(3).choice(len(y), len(y) // 10, replace=False)
    corrupted[bad] *= 1.6  # interference, throttling: 10% of the runs 60% slow

    predictor = Predictor("t", FP32, False, fit(train, corrupted, FP32, False))
    robust = rel_errors([predictor.predict(x) for x in test], y_test)
    assert (robust <= 0.03).mean() >= 0.95

    # Plain least squares on the same relative system (rows divided by the latency, target 1).
    rows = [features(x, FP32, False) for x in train]
    names = sorted({k for r in rows for k in r})
    a = np.array([[r.get(k, 0.0) for k in names] for r in rows]) / corrupted[:, None]
    coef, *_ = np.linalg.lstsq(a, np.ones(len(y)), rcond=None)
    test_rows = np.array([[features(x, FP32, False).get(k, 0.0) for k in names] for x in test])
    plain = rel_errors(test_rows @ coef, y_test)
    assert (robust <= 0.03).mean() > (plain <= 0.03).mean() + 0.2
    assert np.median(robust) < np.median(plain) / 5


def test_macs_count_whole_channel_tiles():
    dense = Layer("c", "conv", (13, 7, 7), (21, 7, 7), kernel=3)
    depthwise = Layer("d", "conv", (13, 7, 7), (13, 7, 7), kernel=3, groups=13)
    assert latency.tiled_macs(dense, 1) == dense.macs and latency.tiled_macs(depthwise, 1) == depthwise.macs
    assert latency.tiled_macs(dense, 8) == 24 * 16 * 9 * 49  # 21 -> 24 outputs, 13 -> 16 inputs
    assert latency.tiled_macs(depthwise, 8) == 16 * 9 * 49  # one input channel per output


def test_calibration_finds_the_channel_tile_the_runtime_pads_to():
    """Latencies made with channels padded to 8 (XNNPACK's fp32 tile on AVX2): the fit that counts tiles of 8
    is picked, and predicts networks it never saw; channels as they are cannot."""
    space = mobilenet(bits=[32], widths=[0.3, 0.45, 0.6, 0.8, 1.0])
    nets = [space.layers(c) for c in calibration_set(space, 80, seed=0)]
    costs = {k: c * (50 if k.endswith(".macs") else 1) for k, c in TRUE.items()}  # compute-bound, as on XNNPACK
    truth = [sum(costs.get(k, 0.0) * v for k, v in features(x, MB_KERNELS, False, tile=8).items()) for x in nets]
    tile, coefficients = fitting.fit_tiled(nets[:60], truth[:60], MB_KERNELS, False)
    assert tile == 8
    tiled = Predictor("t", MB_KERNELS, False, coefficients, channel_tile=8)
    plain = Predictor("t", MB_KERNELS, False, fit(nets[:60], truth[:60], MB_KERNELS, False))
    assert rel_errors([tiled.predict(x) for x in nets[60:]], truth[60:]).max() < 0.01
    assert rel_errors([plain.predict(x) for x in nets[60:]], truth[60:]).max() > 0.02


# --- precision and sparsity ------------------------------------------------------------------------


def uniform(space, bits: int, sparsity: float = 0.0) -> Candidate:
    params = space.baselines()["float"] | {f"bits.{n}": bits for n in space.layer_names} \
        | {f"sparsity.{n}": sparsity for n in space.prunable}
    return Candidate.of(space.name, params)


@pytest.fixture(scope="module")
def fp32_predictor():
    """Fitted on mobilenetv2 networks measured at fp32 only; int8 declared 2x faster."""
    space = mobilenet(bits=[32])
    layers = [space.layers(c) for c in calibration_set(space, 60, seed=0)]
    coefficients = fit(layers, [true_latency(x) for x in layers], MB_KERNELS, False)
    assert {k.split(".")[1] for k in coefficients if k != "network"} == {"fp32"}  # layout changes: not fitted
    return Predictor("t", MB_KERNELS, False, coefficients, speedups={"int8": 2.0})


def test_int8_is_predicted_faster_but_dispatch_cost_is_not_sped_up(fp32_predictor):
    p, space = fp32_predictor, mobilenet()
    fp32, int8 = space.layers(uniform(space, 32)), space.layers(uniform(space, 8))
    ratio = p.predict(fp32) / p.predict(int8)
    assert 1.0 < ratio < 2.0
    for cls in ("dense", "depthwise3"):
        assert p.coefficient(f"{cls}.int8.layers") == p.coefficient(f"{cls}.fp32.layers")
        assert p.coefficient(f"{cls}.int8.macs") == p.coefficient(f"{cls}.fp32.macs") / 2
    # exactly: integer kernels pay per-layer and per-add terms at full price, the rest halved; the
    # classifier writes the float output, so it runs dequantized at the full fp32 price
    f = features(int8, MB_KERNELS, False)
    assert {"dense.int8.macs", "dense.dequant8.macs", "residual.int8.count"} <= f.keys()
    for k in f:
        cls, kernel, quantity = k.split(".") if k.count(".") == 2 else (k, "", "")
        fp32 = p.coefficients.get(f"{cls}.fp32.{quantity}", 0.0)
        if kernel == "int8":
            assert p.coefficient(k) == fp32 * (1.0 if quantity in ("layers", "count") else 0.5), k
        elif kernel == "dequant8":
            assert p.coefficient(k) == fp32, k
    assert p.predict(int8) == pytest.approx(sum(p.coefficient(k) * v for k, v in f.items()), rel=1e-12)


def test_dequantize_plus_fp32_is_not_predicted_faster_than_fp32(fp32_predictor):
    space = mobilenet()
    fp32, int4 = space.layers(uniform(space, 32)), space.layers(uniform(space, 4))
    assert {x.bits for x in int4} == {4}
    assert fp32_predictor.predict(int4) >= fp32_predictor.predict(fp32)


def test_a_declared_dequantize_speed_up_applies_to_every_storage_width():
    p = Predictor("t", MB_KERNELS, False, {"dense.fp32.macs": 1.0, "dense.fp32.layers": 0.3},
                  speedups={"dequant_fp32": 0.5})
    assert [p.coefficient(f"dense.dequant{w}.macs") for w in (4, 8, 16)] == [2.0, 2.0, 2.0]
    assert p.coefficient("dense.dequant4.layers") == 0.3


def test_an_unmeasured_border_costs_its_declared_share_of_a_float_residual_add(fp32_predictor):
    space = mobilenet()
    mixed = space.layers(uniform(space, 8))
    f = features(mixed, MB_KERNELS, False)
    assert f["layout.any.activations"] > 0 and fp32_predictor.coefficient("layout.any.activations") == 0.0
    priced = dataclasses.replace(fp32_predictor, border=0.33)
    for quantity in ("activations", "count"):
        assert priced.coefficient(f"layout.any.{quantity}") == \
            0.33 * fp32_predictor.coefficients[f"residual.fp32.{quantity}"]
    assert priced.predict(mixed) - fp32_predictor.predict(mixed) == pytest.approx(
        sum(priced.coefficient(f"layout.any.{q}") * f[f"layout.any.{q}"] for q in ("activations", "count")))
    fitted = dataclasses.replace(priced, coefficients={**priced.coefficients, "layout.any.count": 0.7})
    assert fitted.coefficient("layout.any.count") == 0.7  # a measured border cost wins over the declared one


def test_scale_multiplies_the_prediction(fp32_predictor):
    space = mobilenet()
    layers = space.layers(uniform(space, 8))
    scaled = dataclasses.replace(fp32_predictor, scale=1.15)
    assert scaled.predict(layers) == pytest.approx(1.15 * fp32_predictor.predict(layers), rel=1e-12)


def test_unstructured_sparsity_counts_only_with_sparse_kernels(fp32_predictor):
    space = mobilenet(granularity="weight")
    dense, sparse = space.layers(uniform(space, 32)), space.layers(uniform(space, 32, sparsity=0.5))
    assert {x.sparsity for x in sparse} == {0.5}
    off = fp32_predictor
    assert off.predict(sparse) == off.predict(dense)
    on = dataclasses.replace(fp32_predictor, sparse_kernels=True)
    assert on.predict(dense) == off.predict(dense)
    assert on.predict(sparse) < on.predict(dense)


# --- the predictor file ----------------------------------------------------------------------------


@pytest.fixture
def saved(fp32_predictor, tmp_path):
    p = dataclasses.replace(fp32_predictor, scale=1.15, channel_tile=8, provenance={
        "digest": "ab" * 32, "measurements": "somewhere.csv", "proxy": "a phone; a reason",
        "report": {"n": 3, "within_10pct": 0.93, "spearman": 0.9}})
    return p, p.save(tmp_path / "sub" / "p.json")


def test_save_load_round_trip(saved):
    predictor, path = saved
    loaded = Predictor.load(path)
    assert loaded == predictor
    space = mobilenet()
    for c in calibration_set(space, 20, seed=5):
        assert loaded.predict(space.layers(c)) == predictor.predict(space.layers(c))
    assert loaded.describe() == predictor.describe()
    assert loaded.describe()["latency.heldout_within_10pct"] == "0.93"
    assert loaded.describe()["latency.proxy"] == "a phone; a reason"


def test_the_file_is_plain_json(saved):
    _, path = saved
    text = path.read_text(encoding="utf-8")
    body = json.loads(text)
    assert body["version"] == latency.FORMAT_VERSION
    assert body["kernels"] == {str(k): v for k, v in MB_KERNELS.items()}
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]  # no temporary file left behind


@pytest.mark.parametrize("version", [1, 3, 0, None, "2"])
def test_another_format_version_is_refused(saved, version):
    _, path = saved
    body = json.loads(path.read_text())
    if version is None:
        del body["version"]
    else:
        body["version"] = version
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="version"):
        Predictor.load(path)


def test_a_pickle_is_not_loaded(fp32_predictor, tmp_path):
    path = tmp_path / "p.json"
    path.write_bytes(pickle.dumps(fp32_predictor))
    with pytest.raises(ValueError):
        Predictor.load(path)


# --- for_target ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapdragon():
    return resolve(compose([], "search"))["target"]


def matching(config, **changes) -> Predictor:
    """A predictor whose declared kernels, speed-ups and scale are exactly the target config's."""
    return dataclasses.replace(Predictor(config["name"], coefficients={"network": 1.0}, **declared(config)),
                               **changes)


def test_the_shipped_predictor_loads_for_the_composed_target(snapdragon):
    assert snapdragon["name"] == "snapdragon665"
    assert Path(snapdragon["predictor"]) == SHIPPED
    predictor = for_target(snapdragon)
    assert predictor.target == "snapdragon665" and predictor.scale == 1.175
    assert predictor.speedups == {"int8": 1.69} and predictor.border == 0.33
    space = mobilenet()
    fp32, int8 = (predictor.predict(space.layers(uniform(space, b))) for b in (32, 8))
    assert 0 < int8 < fp32
    assert predictor.describe()["latency.proxy"].startswith("Google Pixel 2")


def test_a_matching_file_loads(snapdragon, tmp_path):
    path = matching(snapdragon).save(tmp_path / "p.json")
    assert for_target(snapdragon | {"predictor": str(path)}) == Predictor.load(path)
    host = resolve(compose(["target=host"], "calibrate"))["target"]
    path = matching(host).save(tmp_path / "host.json")
    assert for_target(host | {"predictor": str(path)}).scale == 1.0


def test_a_missing_file_says_how_to_calibrate(snapdragon, tmp_path):
    with pytest.raises(UserError) as e:
        for_target(snapdragon | {"predictor": str(tmp_path / "nope.json")})
    message = str(e.value)
    assert "target.predictor" in message and "nope.json" in message
    assert "python -m search.calibrate target=snapdragon665" in message


def test_a_file_fitted_for_another_target_is_refused(snapdragon, tmp_path):
    path = matching(snapdragon, target="host").save(tmp_path / "p.json")
    with pytest.raises(UserError, match="fitted for target 'host'"):
        for_target(snapdragon | {"predictor": str(path)})


@pytest.mark.parametrize("change", ["kernels", "speedups", "scale", "sparse_kernels", "no proxy", "border_cost"])
def test_a_changed_target_yaml_asks_to_recalibrate(snapdragon, tmp_path, change):
    path = matching(snapdragon).save(tmp_path / "p.json")
    target = snapdragon | {"predictor": str(path)}
    if change == "kernels":
        target["kernels"] = {**target["kernels"], 8: "dequant_fp32"}
    elif change == "speedups":
        target["speedups"] = {"int8": 3.0}
    elif change == "scale":
        target["proxy"] = {**target["proxy"], "scale": 1.2}
    elif change == "sparse_kernels":
        target["sparse_kernels"] = True
    elif change == "border_cost":
        target["border_cost"] = 0.5
    else:
        target["proxy"] = None
    with pytest.raises(UserError) as e:
        for_target(target)
    message = str(e.value)
    assert "conf/target/snapdragon665.yaml changed" in message
    assert "python -m search.calibrate target=snapdragon665" in message and "again" in message


@pytest.mark.parametrize("content", [
    "not json", "{}", '{"version": 1}', '{"version": 1, "kernels": {"x": "fp32"}}', "[]",
    "null", '{"version": 1, "kernels": []}',
])
def test_a_file_that_is_not_a_predictor_is_a_user_error(snapdragon, tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(UserError, match="cannot be used"):
        for_target(snapdragon | {"predictor": str(path)})


# --- Report ----------------------------------------------------------------------------------------


def test_report_by_hand():
    measured = [100, 50, 25, 40, 8]
    predicted = [100, 52, 27, 26, 4]  # errors 0, 4%, 8%, 35%, 50%; 25 and 40 swap ranks
    r = Report.of(predicted, measured)
    assert r.n == 5
    assert r.mape == pytest.approx((0 + 0.04 + 0.08 + 0.35 + 0.5) / 5)
    assert r.within_5pct == pytest.approx(2 / 5)
    assert r.within_10pct == pytest.approx(3 / 5)
    assert r.spearman == pytest.approx(1 - 6 * 2 / (5 * (25 - 1)))  # sum d^2 = 2
    assert r.noise_floor is None
    assert Report.of(predicted, measured, noise_floor=0.02).noise_floor == 0.02


def test_report_of_one_row():
    r = Report.of([11.0], [10.0])
    assert r.n == 1 and r.mape == pytest.approx(0.1) and r.within_5pct == 0.0
    assert math.isnan(r.spearman)
