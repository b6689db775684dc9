"""search.backends.onnx: a trained subnet -> one self-contained ONNX file, float or per-layer quantized, that
computes what the fake-quantized torch network computes.

A tiny MobileNetV2 space on 1 x 8 x 8 inputs (scikit-learn's bundled digits, so the network can be trained in a
few seconds) keeps every export to a couple of seconds; the exports are shared by the tests through module-scoped
fixtures. Agreement with the fake-quantized torch network is measured on a trained network: a random one is so
sensitive to its input that any rounding difference flips its argmax, and agreeing would prove nothing."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
import torch.nn.functional as F
import yaml
from onnx import numpy_helper
from torch import nn

import spaces
from search.backends import onnx as onnx_backend
from search.backends.onnx import export
from spaces.fold import deployable
from search.backends.onnx import layers as onnx_layers
from spaces.quantize import ActivationQuantizer
from spaces import Candidate
from tests.emulated import needs_qemu, run_on_avx2
from tests.nets import randomize_bn

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow  # trains and exports networks (seconds each)

CONF = Path(__file__).resolve().parents[1] / "conf" / "space" / "mobilenetv2.yaml"
INPUT = (1, 8, 8)
CLASSES = 10
MIXED = [8, 32, 4, 16, 6, 3]  # cycled over the layers of the mixed-precision export
T = onnx.TensorProto


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_space(granularity: str):
    conf = yaml.safe_load(CONF.read_text())
    return spaces.create(**(conf | {"input_shape": INPUT, "num_classes": CLASSES, "granularity": granularity}))


def sampled(space, seed: int, **params) -> Candidate:
    """A candidate drawn by optuna's RandomSampler, with `params` overriding some of its choices."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return Candidate.of(space.name, space.sample(study.ask()).as_dict() | params)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """scikit-learn's 8 x 8 digits, normalised float32 (N, 1, 8, 8): a train and a test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    x = (x - x.mean()) / x.std()
    return {"x": x[:1400], "y": d.target[:1400], "x_test": x[1400:], "y_test": d.target[1400:]}


def train(space, digits, steps: int = 100, seed: int = 0) -> nn.Module:
    """The space's supernet (full width, float) trained briefly on the digits."""
    torch.manual_seed(seed)
    net = space.supernet()
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(digits["y"]), (32,), generator=g).numpy()
        loss = F.cross_entropy(net(torch.from_numpy(digits["x"][idx])), torch.from_numpy(digits["y"][idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def build(space, candidate: Candidate, supernet: nn.Module, digits) -> nn.Module:
    """The candidate's subnet with batch-norm statistics recomputed on training images, as
    `search.train.recalibrate_bn` does; that forward pass also sets the quantized layers' input ranges."""
    net = space.subnet(supernet, candidate).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    torch_logits(net, digits["x"][:256])
    return net.eval()


def images(n: int, seed: int) -> np.ndarray:
    return torch.randn(n, *INPUT, generator=torch.Generator().manual_seed(seed)).numpy()


def random_batch(digits, n: int = 128, seed: int = 0) -> np.ndarray:
    idx = np.random.default_rng(seed).choice(len(digits["x_test"]), n, replace=False)
    return digits["x_test"][idx]


def layer_bits(space, candidate: Candidate) -> dict[str, int]:
    return {layer.name: layer.bits for layer in space.layers(candidate)}


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return onnx_backend.session(path).run(["logits"], {"input": x})[0]  # as every check of the project runs it


def optimized_ops(path: Path, tmp_path: Path) -> collections.Counter:
    """The ops onnxruntime's CPU provider runs for the file, as the project's sessions optimise it."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=onnx_backend.DISABLED_OPTIMIZERS)
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def torch_logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


class Graph:
    def __init__(self, path: Path):
        self.model = onnx.load(str(path))
        self.init = {i.name: i for i in self.model.graph.initializer}
        self.producer = {t: n for n in self.model.graph.node for t in n.output}
        self.nodes = {n.name: n for n in self.model.graph.node}

    def op(self, tensor: str) -> str | None:
        p = self.producer.get(tensor)
        return p.op_type if p is not None else None

    def integer_kernel(self, node) -> bool:
        """Int8 weights and an int32 bias between two uint8 grids (through a ReLU/clip): what fuses."""
        if len(node.input) < 3 or self.op(node.input[2]) != "DequantizeLinear":
            return False
        if self.stored_weight(node).data_type != T.INT8:
            return False
        out = node.output[0]
        while True:
            after = [n for n in self.model.graph.node if out in n.input]
            if len(after) != 1 or after[0].op_type not in ("Clip", "Relu"):
                break
            out = after[0].output[0]
        return len(after) == 1 and after[0].op_type == "QuantizeLinear" and \
            self.init[after[0].input[2]].data_type == T.UINT8

    def stored_weight(self, node) -> onnx.TensorProto:
        """The initializer a Conv/Gemm's weights come from (through its DequantizeLinear, if any)."""
        w = node.input[1]
        if w in self.init:
            return self.init[w]
        dq = self.producer[w]
        assert dq.op_type == "DequantizeLinear"
        return self.init[dq.input[0]]


# --- the exports ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel_space():
    return make_space("channel")


@pytest.fixture(scope="module")
def trained(channel_space, digits):
    return train(channel_space, digits)


@pytest.fixture(scope="module")
def pruned(channel_space):
    """A sampled float candidate, channel-pruned: every expand layer at 50 % sparsity."""
    s = channel_space
    return sampled(s, seed=3, **{f"sparsity.{n}": 0.5 for n in s.prunable}, **{f"bits.{n}": 32 for n in s.layer_names})


@pytest.fixture(scope="module")
def float_export(channel_space, pruned, digits, tmp_path_factory):
    torch.manual_seed(0)
    supernet = channel_space.supernet()
    randomize_bn(supernet, seed=0)
    net = build(channel_space, pruned, supernet, digits)
    path = export(net, INPUT, tmp_path_factory.mktemp("float") / "net.onnx")
    return net, path


@pytest.fixture(scope="module")
def baselines(channel_space, trained, digits, tmp_path_factory):
    """The space's own two baselines, one trained network: full-width float and uniform 8 bits."""
    out = {}
    for kind, params in channel_space.baselines().items():
        c = Candidate.of(channel_space.name, params)
        net = build(channel_space, c, trained, digits)
        out[kind] = (net, export(net, INPUT, tmp_path_factory.mktemp(kind) / "net.onnx"))
    return out


@pytest.fixture(scope="module")
def int8_export(baselines):
    return baselines["int8"]


@pytest.fixture(scope="module")
def mixed_export(channel_space, trained, digits, tmp_path_factory):
    """A sampled candidate (full widths: the trained weights stay meaningful; sampled pruning) with the layers'
    bits cycling through 8, 32, 4, 16, 6 and 3."""
    s = channel_space
    c = sampled(s, seed=5, **{n: 1.0 for n in s.width_names},
                **{f"bits.{n}": MIXED[i % len(MIXED)] for i, n in enumerate(s.layer_names)})
    net = build(s, c, trained, digits)
    path = export(net, INPUT, tmp_path_factory.mktemp("mixed") / "net.onnx")
    return s, c, net, path


@pytest.fixture(scope="module")
def sparse_export(digits, tmp_path_factory):
    s = make_space("weight")
    c = sampled(s, seed=7, **{f"sparsity.{n}": 0.5 for n in s.prunable}, **{f"bits.{n}": 32 for n in s.layer_names})
    torch.manual_seed(2)
    supernet = s.supernet()
    randomize_bn(supernet, seed=2)
    net = build(s, c, supernet, digits)
    return s, c, net, export(net, INPUT, tmp_path_factory.mktemp("sparse") / "net.onnx")


# --- float ---------------------------------------------------------------------------------------------------------


def test_float_export_matches_torch(float_export):
    net, path = float_export
    x = images(16, seed=1)
    want = torch_logits(net, x)
    got = run(path, x)
    assert got.shape == (16, CLASSES)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    np.testing.assert_allclose(run(path, x[:1]), want[:1], rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_file_is_one_self_contained_plain_graph(float_export):
    _, path = float_export
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no side .data file, no temporary left
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    assert all(i.data_location == T.DEFAULT and not i.external_data for i in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # dynamic batch axis
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == len(onnx_layers(path)) - 1 and ops["Gemm"] == 1
    # batch norm folded, no slicing and no fake quantization left in the graph
    assert not set(ops) & {"BatchNormalization", "Slice", "Gather", "QuantizeLinear", "DequantizeLinear", "Round"}


def test_channel_pruned_layers_are_physically_smaller(channel_space, pruned, float_export):
    _, path = float_export
    g = Graph(path)
    layers = onnx_layers(path)
    descriptors = channel_space.layers(pruned)
    assert [d.name for d in descriptors] == list(layers)
    assert any(d.sparsity > 0 for d in descriptors)  # the candidate really lost channels
    for d in descriptors:
        w = g.init[layers[d.name].weight]
        cin = d.in_shape[0] // d.groups
        want = [d.out_shape[0], cin, d.kernel, d.kernel] if d.kind == "conv" else [d.out_shape[0], cin]
        assert list(w.dims) == want
        node = g.nodes[layers[d.name].node]
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        assert groups == d.groups


def test_weight_sparsity_keeps_exact_zeros(sparse_export):
    s, c, net, path = sparse_export
    g = Graph(path)
    layers = onnx_layers(path)
    units = net.units()
    checked = 0
    for d in s.layers(c):
        w = numpy_helper.to_array(g.init[layers[d.name].weight])
        mask = (units[d.name] if d.kind == "linear" else units[d.name].conv).mask
        assert w.dtype == np.float32 and w.size == d.weights
        zeros = 0 if mask is None else int((mask == 0).sum())
        assert zeros == round(d.weights * d.sparsity)
        assert int((w == 0).sum()) == zeros and np.array_equal(w == 0, mask.numpy() == 0 if zeros else w == 0)
        checked += zeros > 0
    assert checked >= len(s.prunable) // 2


def test_a_range_never_observed_is_a_value_error_and_nothing_is_written(channel_space, tmp_path):
    """The file takes every scale from the network, so a network that never saw data cannot be exported."""
    net = channel_space.build(Candidate.of(channel_space.name, channel_space.baselines()["int8"])).eval()
    with pytest.raises(ValueError, match=r"quantizer 'stem\.conv\.act'.*never observed"):
        export(net, INPUT, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


# --- quantized -----------------------------------------------------------------------------------------------------


def test_int8_layers_read_integers(int8_export):
    """Every layer reads int8 weights and uint8 activations through DequantizeLinear, and its bias as int32 at
    input x weight scale: the operands of an integer kernel."""
    _, path = int8_export
    g = Graph(path)
    for layer in onnx_layers(path).values():
        node = g.nodes[layer.node]
        x_dq, w_dq, b_dq = (g.producer[t] for t in node.input)
        assert x_dq.op_type == w_dq.op_type == b_dq.op_type == "DequantizeLinear"
        assert g.stored_weight(node).data_type == T.INT8
        assert g.init[x_dq.input[2]].data_type == T.UINT8  # uint8 activations
        assert g.init[b_dq.input[0]].data_type == T.INT32
        x_scale, w_scale = (numpy_helper.to_array(g.init[n.input[1]]) for n in (x_dq, w_dq))
        np.testing.assert_array_equal(numpy_helper.to_array(g.init[b_dq.input[1]]), x_scale * w_scale)


def test_reference_rounds_the_biases_the_file_stores_as_int32_and_no_others(mixed_export):
    """`reference` is the plain network with each int32 bias as the file holds it (q x scale, to the bit) and every
    other bias untouched: the network the gate compares the file with, computed from the network alone."""
    _, _, net, path = mixed_export
    g = Graph(path)
    plain, folded = deployable(net, INPUT)
    rounded = onnx_backend.reference(net, INPUT)
    int32 = 0
    for name, layer in onnx_layers(path).items():
        node = g.nodes[layer.node]
        want = plain.get_submodule(folded[name].path).bias.detach().numpy()
        got = rounded.get_submodule(folded[name].path).bias.detach().numpy()
        if len(node.input) > 2 and g.op(node.input[2]) == "DequantizeLinear":
            dq = g.producer[node.input[2]]
            q, scale = (numpy_helper.to_array(g.init[t]) for t in dq.input[:2])
            np.testing.assert_array_equal(got, (q * scale).astype(np.float32))
            assert np.abs(got - want).max() <= 0.5 * scale.max() * (1 + 1e-6)
            int32 += 1
        else:
            np.testing.assert_array_equal(got, want)
    assert 0 < int32 < len(onnx_layers(path))


def test_onnxruntime_runs_every_int8_layer_as_an_integer_kernel(int8_export, mixed_export, tmp_path):
    """The int8 file runs no float convolution: every layer fuses into QLinearConv/QGemm. In the mixed file only
    layers with 8-bit weights between two uint8 grids can (int4 weights and uint16 grids have no integer kernel;
    onnxruntime's selectors decide which of those fuse) and the others run as float kernels on dequantized
    operands."""
    _, path = int8_export
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] + ops["QGemm"] == len(onnx_layers(path)) and not ops["Conv"] + ops["Gemm"]
    _, _, _, mixed_path = mixed_export
    g = Graph(mixed_path)
    integer = [name for name, layer in onnx_layers(mixed_path).items() if g.integer_kernel(g.nodes[layer.node])]
    optimized_ops(mixed_path, tmp_path)
    fused = {n.name.split("_token")[0] for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node
             if n.op_type in ("QLinearConv", "QGemm")}
    assert fused and fused <= set(integer) < set(onnx_layers(mixed_path))


# The ONNX file computes what `reference` (the network with the file's int32 bias rounding) computes, up to float
# rounding and the requantization order of its integer kernels, so it flips a prediction only where a value lands
# within that rounding of a rounding boundary. Measured over training seeds 0-7, natively (AMD EPYC, AVX-512 VNNI)
# and with torch capped at AVX2, for both files below: 0 of 128 images disagreed with `reference`, and the mean
# logit difference was at most 0.052 of an 8-bit step (against the network without the bias rounding: up to 6 of
# 128 on these tiny networks). The bounds: 2 images, and half a step (10x the worst).
MAX_DISAGREEMENTS, MAX_STEPS = 2, 0.5


def agreement(net, path, x) -> tuple[int, float]:
    """How many images the file and the torch network (as the file rounds its int32 biases: `reference`) classify
    differently, and the mean logit difference in units of an 8-bit step of the logits' spread."""
    want, got = torch_logits(onnx_backend.reference(net, INPUT), x), run(path, x)
    return int((want.argmax(1) != got.argmax(1)).sum()), float(np.abs(got - want).mean() / np.ptp(want) * 256)


def test_int8_file_computes_the_fake_quantized_network(int8_export, digits):
    """Same quantization points, same scales: only float rounding (and the int32 bias) remains."""
    net, path = int8_export
    disagree, steps = agreement(net, path, random_batch(digits))
    assert disagree <= MAX_DISAGREEMENTS and steps < MAX_STEPS


RUN_FILES = """import sys, numpy as np
from search.backends import onnx
assert onnx.u8s8_saturates(), "this CPU's u8s8 kernels should saturate"
x = np.load(sys.argv[1])
np.savez(sys.argv[2], **{str(i): onnx.outputs(p, x) for i, p in enumerate(sys.argv[3:])})
"""


@needs_qemu
def test_an_x86_cpu_without_vnni_computes_what_this_cpus_kernels_compute(int8_export, mixed_export, digits, tmp_path):
    """The same files in a process that sees an AVX2 CPU without VNNI (`qemu-x86_64 -cpu Haswell-v4`), whose u8s8
    kernels add pairs of products in 16 bits and saturate: `session` finds that and runs u8u8 kernels, and the
    integer layers give the same logits as on this CPU (measured: to the bit on an AVX-512 VNNI EPYC)."""
    paths = [int8_export[1], mixed_export[3]]
    x = random_batch(digits)
    np.save(tmp_path / "x.npy", x)
    run_on_avx2(RUN_FILES, tmp_path / "x.npy", tmp_path / "out.npz", *paths)
    emulated = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(emulated["0"], run(paths[0], x))  # all-integer file: the same to the bit
    here = run(paths[1], x)  # float kernels too: float rounding apart
    np.testing.assert_allclose(emulated["1"], here, rtol=0, atol=1e-4 * float(np.abs(here).max()))
    assert (emulated["1"].argmax(1) == here.argmax(1)).all()


def test_the_file_quantizes_where_the_network_does(int8_export, mixed_export):
    """One precision plan used twice: every active quantizer of the network is one QuantizeLinear in the file
    (at its own scale and zero point), and there are no others."""
    for net, path in (int8_export, mixed_export[2:]):
        g = Graph(path)
        quantizers = [m for m in net.modules() if isinstance(m, ActivationQuantizer) and m.active]
        planned = sorted((round(m.qparams()["scale"], 9), m.qparams()["zero_point"]) for m in quantizers)
        found = sorted((round(float(numpy_helper.to_array(g.init[n.input[1]])), 9),
                        int(numpy_helper.to_array(g.init[n.input[2]])))
                       for n in g.model.graph.node if n.op_type == "QuantizeLinear")
        assert found == planned


def test_file_size_tracks_bits(baselines):
    (_, float_path), (_, int8_path) = baselines["float"], baselines["int8"]
    assert float_path.stat().st_size > 2.5 * int8_path.stat().st_size
    assert [p.name for p in int8_path.parent.iterdir()] == [int8_path.name]


def test_mixed_precision_per_layer(mixed_export):
    s, c, _, path = mixed_export
    g = Graph(path)
    layers = onnx_layers(path)
    seen = collections.Counter()
    for d in s.layers(c):
        node = g.nodes[layers[d.name].node]
        w = g.stored_weight(node)
        q = numpy_helper.to_array(w)
        if d.bits == 32:  # plain float layer: float weights straight in (its input may be a quantized producer's)
            assert node.input[1] in g.init and w.data_type == T.FLOAT
            assert node.op_type in ("Conv", "Gemm")
        else:
            assert g.op(node.input[0]) == "DequantizeLinear" and g.op(node.input[1]) == "DequantizeLinear"
            want = {8: T.INT8, 6: T.INT8, 4: T.INT4, 3: T.INT4, 16: T.INT16}[d.bits]
            assert w.data_type == want, (d.name, d.bits, T.DataType.Name(w.data_type))
            qmax = 2 ** (d.bits - 1) - 1  # 3- and 6-bit layers keep their own grid inside the wider type
            assert int(np.abs(q.astype(np.int64)).max()) == qmax
            act = g.init[g.producer[node.input[0]].input[2]]  # the input's zero point: its storage type
            assert act.data_type == (T.UINT16 if d.bits == 16 else T.UINT8)
        seen[d.bits] += 1
    assert set(seen) == set(MIXED)


def test_mixed_precision_file_computes_the_fake_quantized_network(mixed_export, digits):
    _, _, net, path = mixed_export
    disagree, steps = agreement(net, path, random_batch(digits, seed=1))
    assert disagree <= MAX_DISAGREEMENTS and steps < MAX_STEPS


def test_size_kb_is_the_onnx_files_size(channel_space, pruned, float_export, baselines, mixed_export, sparse_export):
    """The size objective predicts the exported ONNX file from the layers alone (graph included)."""
    from search.objectives import size_kb

    cases = [(channel_space.layers(pruned), float_export[1]), (mixed_export[0].layers(mixed_export[1]), mixed_export[3]),
             (sparse_export[0].layers(sparse_export[1]), sparse_export[3])]
    cases += [(channel_space.layers(Candidate.of(channel_space.name, p)), baselines[kind][1])
              for kind, p in channel_space.baselines().items()]
    for layers, path in cases:
        assert size_kb(layers, "onnx") == pytest.approx(path.stat().st_size / 1024, rel=0.06), path
