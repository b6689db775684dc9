"""search.backends.litert and search.runners.litert: a trained subnet -> one `.tflite` file that LiteRT runs on
XNNPACK, computing what the torch network computes; refused, by layer, where a precision cannot be expressed.

The networks are tests/test_export.py's (a tiny MobileNetV2 space on scikit-learn's 8 x 8 digits), and every
file runs in the real LiteRT interpreter. A float file is the torch network to float rounding. An int8 file runs
integer kernels, whose requantization rounds differently from torch's float arithmetic by one step now and then;
on these tiny, briefly trained networks that flips a few of the 397 test images, and how many depends on the
network training made, which depends on the CPU's float paths (torch's, not XNNPACK's: the files' outputs were
bit-identical under XNNPACK's AVX-512 and AVX2 paths, the latter under `qemu-x86_64 -cpu Haswell-v4`). So
agreement is bounded in images, from that spread, and what makes a file wrong is checked exactly, by
`litert_audit`, on files with each defect planted (tests/tflite_edit.py)."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from search.backends import get, litert, litert_audit
from search.runners.litert import LiteRTRunner, time_model
from spaces import Candidate
from tests import tflite_edit
from tests.emulated import needs_qemu, run_on_avx2
from tests.test_export import INPUT, build, digits, make_space, sampled, torch_logits, train  # noqa: F401 (digits: a fixture)

pytestmark = pytest.mark.slow  # converts networks (seconds each)


@pytest.fixture(scope="module")
def space():
    return make_space("channel")


@pytest.fixture(scope="module")
def trained(space, digits):
    torch.set_num_threads(1)
    return train(space, digits, steps=300)


@pytest.fixture(scope="module")
def candidates(space):
    """The float baseline, a channel-pruned float candidate and the int8 baseline."""
    return {**{kind: Candidate.of(space.name, params) for kind, params in space.baselines().items()},
            "pruned": sampled(space, 3, **{f"sparsity.{n}": 0.5 for n in space.prunable},
                              **{f"bits.{n}": 32 for n in space.layer_names})}


@pytest.fixture(scope="module")
def files(space, candidates, trained, digits, tmp_path_factory):
    """`candidates`, each as a .tflite."""
    nets = {kind: build(space, candidate, trained, digits) for kind, candidate in candidates.items()}
    folder = tmp_path_factory.mktemp("litert")
    return {kind: (net, litert.export(net, INPUT, folder / f"{kind}.tflite")) for kind, net in nets.items()}


def test_the_backend_is_registered_with_the_same_interface_as_onnx():
    backend = get("litert")
    assert backend is litert and backend.SUFFIX == ".tflite"
    onnx = get("onnx")
    for name in ("NAME", "SUFFIX", "export", "outputs"):
        assert hasattr(onnx, name) and hasattr(backend, name)


@pytest.mark.parametrize("kind", ["float", "pruned"])
def test_a_float_file_is_the_torch_network(files, digits, kind):
    net, path = files[kind]
    x = digits["x_test"]
    want, got = torch_logits(net, x), litert.outputs(path, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    it = litert.interpreter(path)
    assert litert.delegated(it) == 1  # XNNPACK runs the whole graph
    assert it.get_input_details()[0]["dtype"] == np.float32


def test_channel_pruning_makes_the_file_smaller(files):
    assert files["pruned"][1].stat().st_size < 0.8 * files["float"][1].stat().st_size


def test_size_kb_is_the_tflite_files_size(space, candidates, files):
    """A target that runs .tflite files (target.file: litert) predicts their size from the layers alone."""
    from search.objectives import size_kb

    for kind, candidate in candidates.items():
        predicted, real = size_kb(space.layers(candidate), "litert"), files[kind][1].stat().st_size / 1024
        assert predicted == pytest.approx(real, rel=0.06), kind


def test_an_int8_file_runs_int8_kernels_on_xnnpack_and_agrees_with_the_network(files, digits):
    net, path = files["int8"]
    it = litert.interpreter(path, xnnpack=False)  # every op visible
    ops = it._get_ops_details()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all(tensors[op["inputs"][1]]["dtype"] == np.int8 for op in convs)
    assert all(tensors[op["outputs"][0]]["dtype"] == np.int8 for op in convs)
    assert litert.delegated(litert.interpreter(path)) == 1
    assert disagreements(net, path, digits["x_test"]) <= DISAGREEMENTS
    assert path.stat().st_size < 0.5 * files["float"][1].stat().st_size


def test_mixed_8_bit_and_float_layers_convert_and_run_on_xnnpack(space, mixed, digits):
    """A float layer between 8-bit ones stays a float kernel on float32 weights (the converter would otherwise make
    it an int8 kernel of its own), and the file agrees with the network."""
    net, path, candidate = mixed
    assert litert.delegated(litert.interpreter(path)) == 1
    it = litert.interpreter(path, xnnpack=False)  # every op visible
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    weights = [tensors[op["inputs"][1]] for op in it._get_ops_details()
               if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    plain = [w for w in weights if "torch.nn.modules" in w["name"]]  # float layers: plain torch modules
    assert len(plain) == sum(layer.bits == 32 for layer in space.layers(candidate))
    assert all(w["dtype"] == np.float32 for w in plain)
    assert sum(w["dtype"] == np.int8 for w in weights) >= len(weights) - len(plain) - 1  # a last int8 layer may
    assert litert_audit.audit(path, net, INPUT) == []                                    # run as float on int8 weights
    assert disagreements(net, path, digits["x_test"]) <= DISAGREEMENTS


# Training seeds 0-7 of these networks, natively (AMD EPYC, AVX-512 VNNI) and with torch capped at AVX2: the int8
# file disagreed with its network on 0-3 of the 397 images, the mixed one on 0-4 (4 here: the seed the tests use);
# twice the worst is the bound. A planted weight-scale defect (x1.25 on one layer) disagreed on 32, and a zero point
# one step off on 4: agreement cannot tell the latter from a correct file, which is why the audit below exists.
DISAGREEMENTS = 8


def disagreements(net, path, x) -> int:
    return int((torch_logits(net, x).argmax(1) != litert.outputs(path, x).argmax(1)).sum())


@pytest.fixture(scope="module")
def mixed(space, trained, digits, tmp_path_factory):
    """The mixed 8-bit/float network of the test above, its file and its candidate."""
    c = sampled(space, 5, **{n: 1.0 for n in space.width_names},
                **{f"bits.{n}": (8, 32)[i % 2] for i, n in enumerate(space.layer_names)})
    net = build(space, c, trained, digits)
    return net, litert.export(net, INPUT, tmp_path_factory.mktemp("mixed") / "mixed.tflite"), c


RUN_FILES = """import sys, numpy as np
from search.backends import litert
x = np.load(sys.argv[1])
np.savez(sys.argv[2], **{str(i): litert.outputs(p, x) for i, p in enumerate(sys.argv[3:])})
"""


@needs_qemu
def test_xnnpacks_avx2_path_computes_what_this_cpus_path_computes(files, mixed, digits, tmp_path):
    """The same files run by the same LiteRT wheel in a process that sees an AVX2-only CPU (`qemu-x86_64 -cpu
    Haswell-v4`: XNNPACK picks its microkernels, and their requantization, from CPUID): the integer kernels give
    the same logits to the bit, the float ones to float rounding, so a file's agreement with its network does not
    depend on which x86 CPU runs it."""
    paths = [files["int8"][1], mixed[1], files["float"][1]]
    x = digits["x_test"]
    np.save(tmp_path / "x.npy", x)
    run_on_avx2(RUN_FILES, tmp_path / "x.npy", tmp_path / "out.npz", *paths)
    emulated = np.load(tmp_path / "out.npz")
    here = [litert.outputs(p, x) for p in paths]
    np.testing.assert_array_equal(emulated["0"], here[0])  # all-integer file: the same to the bit
    for i in (1, 2):  # float kernels: float rounding (measured 0 apart for these files; SSE4's path 4e-6 apart)
        np.testing.assert_allclose(emulated[str(i)], here[i], rtol=0, atol=1e-4 * float(np.abs(here[i]).max()))
    assert disagreements(mixed[0], mixed[1], x) <= DISAGREEMENTS


@pytest.mark.parametrize("kind", ["float", "pruned", "int8"])
def test_every_file_the_backend_writes_holds_its_networks_precision_plan(files, kind):
    net, path = files[kind]
    assert litert_audit.audit(path, net, INPUT) == []


@pytest.mark.parametrize("what,by,found", [
    ("weight_scale", 1.02, "weight scales differ"),
    ("input_scale", 1.02, "input grid scale"),
    ("input_zero_point", 1, "zero point -12[0-9], the network quantizes it to"),
])
@pytest.mark.parametrize("which", ["int8", "mixed"])
def test_a_scale_or_zero_point_planted_in_the_file_is_refused_naming_the_layer(files, mixed, which, what, by,
                                                                               found, tmp_path):
    net, path = mixed[:2] if which == "mixed" else files[which]
    kernel = tflite_edit.integer_kernels(path)[0]
    broken = tflite_edit.edit(path, tmp_path / "broken.tflite", kernel, what, by)
    problems = litert_audit.audit(broken, net, INPUT)
    assert problems and re.match(rf"layer '[\w.]+': .*{found}", problems[0])
    litert.outputs(broken, np.zeros((1, *INPUT), np.float32))  # the file still loads and runs: only the audit sees it


def test_a_float_layer_made_integer_is_refused(mixed, monkeypatch, tmp_path):
    """litert-torch outside strict QDQ mode turns a float layer between int8 ones into an int8 kernel on weights
    it quantizes itself: the real defect `_strict_qdq` exists for, planted by converting that way."""
    net = mixed[0]
    monkeypatch.setattr(litert, "_strict_qdq", contextlib.nullcontext)
    broken = litert.export(net, INPUT, tmp_path / "broken.tflite")
    problems = litert_audit.audit(broken, net, INPUT)
    assert any(re.match(r"layer '[\w.]+': the plan runs it as a float32 kernel; the file has .*int8", p)
               for p in problems), problems


def test_a_missing_quantize_point_is_refused(mixed, monkeypatch, tmp_path):
    """An exporter that drops one integer layer's input quantizer writes a file where that layer runs on a float
    input (dequantized weights, a float kernel): planted by dropping it from the network the converter reads."""
    net = mixed[0]
    plain = litert.plain

    def dropped(*args):
        model, folded = plain(*args)
        first = next(f for f in folded.values() if isinstance(model.get_submodule(f.path), litert._Int8Weights)
                     and f.path.endswith(".layer"))
        model.get_submodule(first.path.rpartition(".")[0]).quantize = torch.nn.Identity()
        return model, folded

    monkeypatch.setattr(litert, "plain", dropped)
    broken = litert.export(net, INPUT, tmp_path / "broken.tflite")
    monkeypatch.setattr(litert, "plain", plain)
    problems = litert_audit.audit(broken, net, INPUT)
    assert any("the plan runs it as a int8 kernel; the file has input float32" in p for p in problems), problems
    assert any("a quantize point is missing" in p for p in problems), problems


@pytest.mark.parametrize("bits", [4, 16])
def test_a_precision_the_file_cannot_hold_is_refused_naming_the_layer(space, trained, digits, tmp_path, bits):
    names = space.layer_names
    c = Candidate.of(space.name, space.baselines()["int8"] | {f"bits.{names[2]}": bits})
    net = build(space, c, trained, digits)
    with pytest.raises(ValueError, match=rf"layer '{names[2]}': {bits} bits cannot be expressed"):
        litert.export(net, INPUT, tmp_path / "x.tflite")
    assert not list(tmp_path.iterdir())


def test_a_range_never_observed_is_refused_and_nothing_is_written(space, tmp_path):
    net = space.build(Candidate.of(space.name, space.baselines()["int8"])).eval()
    with pytest.raises(ValueError, match="never observed"):
        litert.export(net, INPUT, tmp_path / "x.tflite")
    assert not list(tmp_path.iterdir())


def test_the_runner_times_files_on_xnnpack_with_the_host_discipline(files):
    timing = time_model(files["float"][1], min_runs=5, min_seconds=0, warmup=1)
    assert timing.runs >= 5 and timing.median_ms > 0 and timing.iqr_ms >= 0
    assert time_model(files["int8"][1], min_runs=5, min_seconds=0, warmup=1, xnnpack=False).runs >= 5
    runner = LiteRTRunner(passes=3, min_seconds=0, warmup=1)
    timings, references = runner.measure({k: files[k][1] for k in ("int8", "pruned")}, files["float"][1])
    assert list(timings) == ["int8", "pruned"] and len(references) == 3
    settings = runner.settings()
    assert settings["runtime"] == "litert" and settings["provider"] == "XNNPACK" and settings["threads"] == 1
    assert "onnxruntime" not in settings
    with pytest.raises(FileNotFoundError):
        time_model(files["float"][1].with_name("missing.tflite"))


def test_calibration_measures_tflite_files_with_the_litert_runner(space):
    """`python -m search.calibrate target=host-litert`'s measuring step: each network converted in a Ray task,
    timed on XNNPACK, described by the runner's settings."""
    from search import calibrate

    candidates = [Candidate.of(space.name, params) for params in space.baselines().values()]
    runner = {"kind": "litert", "threads": 1, "warmup": 1, "passes": 3, "min_seconds": 0}
    rows, settings, floor = calibrate.measure(space, candidates, runner, seed=0)
    assert [r.candidate for r in rows] == candidates and all(r.latency_ms > 0 and r.runs >= 3 for r in rows)
    assert settings["runtime"] == "litert" and settings["provider"] == "XNNPACK" and floor is not None


def test_the_host_litert_target_narrows_the_space_to_what_its_files_hold():
    import yaml

    from search.backends import HOLDS
    from search.config import ConfigError, compose, resolve, validate_target
    from search.study_config import validate

    assert HOLDS["litert"] == (5, 6, 7, 8, 32)  # what `expressible` lets through, the one place it is written
    for name in ("search", "calibrate"):
        cfg = resolve(compose(["target=host-litert"], name))
        assert cfg["space"]["bits"] == [8, 32]  # the space offers [4, 8, 16, 32]
        validate_target(cfg["target"], cfg["space"]["bits"])
    target = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "target" / "host-litert.yaml").read_text())
    with pytest.raises(ConfigError, match="no entry for 4-bit layers"):
        validate_target(target, [4, 8, 16, 32])
    cfg = resolve(compose(["target=host-litert"]))
    with pytest.raises(ConfigError, match=r"^target\.bits: unknown key"):  # the file format decides, not the target
        validate({**cfg, "target": {**cfg["target"], "bits": [4, 8]}})
