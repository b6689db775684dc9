"""The fbnet space against the description in the shared data README (data/device-latency/README.md,
quoted in conf/measurements/README.md). Every expected number is worked out here by hand from the
README's numbers, never from spaces/fbnet.py's tables:

    input 3x32x32, 100 classes; stem 3x3 conv -> 16, stride 1
    blocks per stage [1, 4, 4, 4, 4, 4, 1]  -> stage first blocks are 0, 1, 5, 9, 13, 17, 21
    channels         [16, 24, 32, 64, 112, 184, 352]
    first strides    [1, 1, 2, 2, 1, 2, 1]  -> H = W = 32, 32, 16, 8, 8, 4, 4 after each stage
    head 1x1 conv 352 -> 1504 at 4x4, BN, ReLU, global pool, linear 1504 -> 100
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

import spaces
from spaces import Candidate, Layer

ROOT = Path(__file__).resolve().parents[1]
A50 = ROOT / "conf" / "measurements" / "fbnet_samsung_a50.csv"
CHOICES = ["k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip"]  # README


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def space():
    return spaces.create("fbnet")


def net_of(ops: list[str]) -> Candidate:
    assert len(ops) == 22
    return Candidate.of("fbnet", {f"op.b{i}": op for i, op in enumerate(ops)})


def with_ops(default: str, **at: str) -> Candidate:
    """All blocks `default`, except the ones given as b<i>=op."""
    ops = [default] * 22
    for name, op in at.items():
        ops[int(name[1:])] = op
    return net_of(ops)


def by_name(space, c: Candidate) -> dict[str, Layer]:
    return {l.name: l for l in space.layers(c)}


def conv(name, cin, hw_in, cout, hw_out, k=1, stride=1, groups=1) -> Layer:
    return Layer(name, "conv", (cin, hw_in, hw_in), (cout, hw_out, hw_out), k, stride, groups)


# --- descriptors, by hand ----------------------------------------------------------------------------


def test_space_basics(space):
    assert space.name == "fbnet" and space.encoding == "ops"
    assert sorted(space.ops) == sorted(CHOICES)
    assert spaces.SPACES["fbnet"] is type(space)


def test_stem(space):
    stem = space.layers(with_ops("k3_e1"))[0]
    assert stem == conv("stem", 3, 32, 16, 32, k=3)
    assert stem.macs == 16 * 3 * 9 * 32 * 32 == 442_368


def test_block0_k3_e6(space):
    layers = by_name(space, with_ops("skip", b0="k3_e6"))
    assert layers["b0.expand"] == conv("b0.expand", 16, 32, 96, 32)
    assert layers["b0.dw"] == conv("b0.dw", 96, 32, 96, 32, k=3, groups=96)
    assert layers["b0.project"] == conv("b0.project", 96, 32, 16, 32)
    assert layers["b0.expand"].macs == 96 * 16 * 32 * 32
    assert layers["b0.dw"].macs == 96 * 9 * 32 * 32
    assert layers["b0.project"].macs == 16 * 96 * 32 * 32


def test_k5_e1_g2_block_has_groups_2(space):
    # block 1 opens stage 2: 16 -> 24, stride 1, at 32x32; e1 keeps 16 hidden channels
    layers = by_name(space, with_ops("skip", b1="k5_e1_g2"))
    assert layers["b1.expand"] == conv("b1.expand", 16, 32, 16, 32, groups=2)
    assert layers["b1.dw"] == conv("b1.dw", 16, 32, 16, 32, k=5, groups=16)
    assert layers["b1.project"] == conv("b1.project", 16, 32, 24, 32, groups=2)
    assert layers["b1.expand"].weights == 16 * 8 and layers["b1.project"].weights == 24 * 8
    assert layers["b1.dw"].macs == 16 * 25 * 32 * 32
    # block 11 (stage 4, 64 -> 64 at 8x8) with k3_e1_g2
    layers = by_name(space, with_ops("skip", b11="k3_e1_g2"))
    assert layers["b11.expand"] == conv("b11.expand", 64, 8, 64, 8, groups=2)
    assert layers["b11.project"] == conv("b11.project", 64, 8, 64, 8, groups=2)


def test_first_block_of_stage3_halves_h_and_w(space):
    # block 5: 24 -> 32, stride 2, input 32x32 -> 16x16; k3_e3 gives 72 hidden channels
    layers = by_name(space, with_ops("k3_e1", b5="k3_e3"))
    assert layers["b5.expand"] == conv("b5.expand", 24, 32, 72, 32)
    assert layers["b5.dw"] == conv("b5.dw", 72, 32, 72, 16, k=3, stride=2, groups=72)
    assert layers["b5.project"] == conv("b5.project", 72, 16, 32, 16)
    assert layers["b5.project"].macs == 32 * 72 * 16 * 16
    assert layers["b6.expand"].in_shape == (32, 16, 16)  # the next block sees 16x16


def test_skip_identity_has_no_layers_and_skip_with_stride_is_a_1x1_conv(space):
    layers = by_name(space, with_ops("k3_e1", b2="skip", b9="skip", b13="skip"))
    assert not [n for n in layers if n.startswith("b2.")]  # 24 -> 24, stride 1: identity
    # block 9 opens stage 4: 32 -> 64, stride 2, 16x16 -> 8x8
    assert [n for n in layers if n.startswith("b9.")] == ["b9.skip"]
    assert layers["b9.skip"] == conv("b9.skip", 32, 16, 64, 8, stride=2)
    assert layers["b9.skip"].macs == 64 * 32 * 8 * 8
    # block 13 opens stage 5: 64 -> 112, stride 1, 8x8: a 1x1 conv without stride
    assert layers["b13.skip"] == conv("b13.skip", 64, 8, 112, 8)


def test_head_and_classifier(space):
    layers = space.layers(with_ops("k5_e6"))
    head, classifier = layers[-2], layers[-1]
    assert head == conv("head", 352, 4, 1504, 4)
    assert head.macs == 1504 * 352 * 4 * 4 == 8_470_528
    assert classifier == Layer("classifier", "linear", (1504, 1, 1), (100, 1, 1))
    assert classifier.macs == 1504 * 100 and classifier.params == 1504 * 100 + 100


def test_layer_counts_and_macs_all_skip_and_all_k5_e6(space):
    # all skip: stem, a 1x1 conv where channels or stride change (blocks 1, 5, 9, 13, 17, 21), head,
    # classifier
    skip = space.layers(with_ops("skip"))
    assert len(skip) == 1 + 6 + 1 + 1
    assert [l.name for l in skip] == ["stem", "b1.skip", "b5.skip", "b9.skip", "b13.skip", "b17.skip",
                                      "b21.skip", "head", "classifier"]
    skip_macs = (16 * 3 * 9 * 32 * 32      # stem
                 + 24 * 16 * 32 * 32       # b1: 16 -> 24 at 32x32
                 + 32 * 24 * 16 * 16       # b5: 24 -> 32, stride 2, out 16x16
                 + 64 * 32 * 8 * 8         # b9: 32 -> 64, out 8x8
                 + 112 * 64 * 8 * 8        # b13: 64 -> 112 at 8x8
                 + 184 * 112 * 4 * 4       # b17: 112 -> 184, out 4x4
                 + 352 * 184 * 4 * 4       # b21: 184 -> 352 at 4x4
                 + 1504 * 352 * 4 * 4      # head
                 + 1504 * 100)             # classifier
    assert sum(l.macs for l in skip) == skip_macs
    # all k5_e6: three convs per block
    big = space.layers(with_ops("k5_e6"))
    assert len(big) == 1 + 22 * 3 + 1 + 1 == 69
    assert [l.stride for l in big if l.name.endswith(".dw")] == [1, 1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1,
                                                                 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert all(l.kernel == 5 and l.groups == l.in_shape[0] == l.out_shape[0] for l in big if l.name.endswith(".dw"))
    # the input and output channels of every block, in order, from the README's tables
    cins = [16, 16, 24, 24, 24, 24, 32, 32, 32, 32, 64, 64, 64, 64, 112, 112, 112, 112, 184, 184, 184, 184]
    couts = [16, 24, 24, 24, 24, 32, 32, 32, 32, 64, 64, 64, 64, 112, 112, 112, 112, 184, 184, 184, 184, 352]
    sizes = [32] * 5 + [16] * 4 + [8] * 8 + [4] * 5  # output H (= W) of each block
    layers = {l.name: l for l in big}
    for i, (cin, cout, hw) in enumerate(zip(cins, couts, sizes)):
        assert layers[f"b{i}.expand"].in_shape[0] == cin and layers[f"b{i}.expand"].out_shape[0] == 6 * cin
        assert layers[f"b{i}.dw"].in_shape[0] == 6 * cin
        assert layers[f"b{i}.project"].out_shape == (cout, hw, hw), i


def test_padding_keeps_h_over_stride_for_every_layer(space):
    for ops in (["k5_e6"] * 22, ["skip"] * 22, (CHOICES * 3)[:22], (CHOICES[::-1] * 3)[:22]):
        for l in space.layers(net_of(ops)):
            if l.kind == "conv":
                assert l.out_shape[1] == l.in_shape[1] // l.stride and l.out_shape[2] == l.in_shape[2] // l.stride


# --- the built network against the descriptors ----------------------------------------------------


def run_and_record(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[nn.Module, tuple, tuple]]]:
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, tuple(i[0].shape[1:]), tuple(o.shape[1:]))))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            y = net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return y, seen


MIXED = [["k5_e6"] * 22, ["skip"] * 22, (CHOICES * 3)[:22], (CHOICES[::-1] * 3)[:22],
         ["k3_e1_g2", "k5_e1_g2"] * 11]


@pytest.mark.parametrize("ops", MIXED, ids=["all-k5_e6", "all-skip", "cycle", "cycle-reversed", "g2"])
def test_build_matches_descriptors(space, ops):
    c = net_of(ops)
    torch.manual_seed(0)
    net = space.build(c)
    y, seen = run_and_record(net, torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 100) and torch.isfinite(y).all()
    layers = space.layers(c)
    assert len(seen) == len(layers)
    for (m, in_shape, out_shape), l in zip(seen, layers):
        if l.kind == "linear":
            assert isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (l.in_shape[0], l.out_shape[0])
            continue
        assert isinstance(m, nn.Conv2d), l.name
        assert in_shape == l.in_shape and out_shape == l.out_shape, l.name
        assert tuple(m.weight.shape) == (l.out_shape[0], l.in_shape[0] // l.groups, l.kernel, l.kernel), l.name
        assert m.stride == (l.stride, l.stride) and m.groups == l.groups, l.name
        assert m.padding == (l.kernel // 2, l.kernel // 2), l.name


def test_residual_only_where_channels_and_stride_allow(space):
    """Residual add for a conv block when C_in == C_out and stride 1; skip is the identity there."""
    ops = ["k3_e6", "k5_e3", "k3_e1", "skip"] + ["k3_e3"] * 18  # b0 16->16, b1 16->24, b2 24->24, b3 skip
    net = space.build(net_of(ops)).eval()
    blocks = list(net.children())[1:23]
    torch.manual_seed(1)
    x0 = torch.randn(1, 16, 32, 32)
    x1 = torch.randn(1, 24, 32, 32)
    with torch.no_grad():
        # b0 k3_e6 16 -> 16 stride 1: x + body(x)
        torch.testing.assert_close(blocks[0](x0), x0 + blocks[0].body(x0))
        assert not torch.allclose(blocks[0](x0), blocks[0].body(x0))
        # b1 16 -> 24: no residual
        torch.testing.assert_close(blocks[1](x0), blocks[1].body(x0))
        # b2 24 -> 24: residual
        torch.testing.assert_close(blocks[2](x1), x1 + blocks[2].body(x1))
        # b3 skip 24 -> 24: exactly the input, no parameters
        assert torch.equal(blocks[3](x1), x1) and not list(blocks[3].parameters())
        # b5 (first of stage 3, 24 -> 32, stride 2): no residual, output halves H and W
        assert blocks[5](x1).shape == (1, 32, 16, 16)


def test_channel_shuffle_only_in_g2_blocks(space):
    from spaces.fbnet import ChannelShuffle

    ops = (CHOICES * 3)[:22]
    net = space.build(net_of(ops))
    blocks = list(net.children())[1:23]
    has_shuffle = [any(isinstance(m, ChannelShuffle) for m in b.modules()) for b in blocks]
    assert has_shuffle == [op.endswith("_g2") for op in ops]
    # between the 1x1 grouped conv (with its BN and ReLU) and the depthwise conv, as the README says
    body = list(blocks[1].body.children())
    assert isinstance(body[1], ChannelShuffle)
    assert isinstance(body[0][0], nn.Conv2d) and isinstance(body[0][-1], nn.ReLU)
    assert isinstance(body[2][0], nn.Conv2d) and body[2][0].groups == body[2][0].in_channels
    # a shuffle of 2 groups interleaves them: channels [a0 a1 | b0 b1] -> [a0 b0 a1 b1]
    x = torch.arange(4.0).view(1, 4, 1, 1)
    assert body[1](x).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


# --- encoding --------------------------------------------------------------------------------------


def first_rows(n: int) -> list[list[str]]:
    with A50.open(newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["arch_id", "ops", "latency_ms"]
        return [row for _, row in zip(range(n), reader)]


def test_encode_decode_round_trip_on_shipped_rows(space):
    rows = first_rows(20)
    assert len(rows) == 20
    for arch_id, ops, _ in rows:
        c = space.decode(ops)
        assert c.space == "fbnet"
        assert space.encode(c) == ops, arch_id
        assert space.ops_of(c) == ops.split(" ")
        assert space.decode(space.encode(c)) == c


def test_decode_errors(space):
    ops = first_rows(1)[0][1].split()
    bad = list(ops)
    bad[7] = "k7_e6"
    with pytest.raises(ValueError, match=r"block 7: unknown op 'k7_e6'"):
        space.decode(" ".join(bad))
    with pytest.raises(ValueError, match=r"expected 22 blocks, got 21"):
        space.decode(" ".join(ops[:21]))
    with pytest.raises(ValueError, match=r"expected 22 blocks, got 23"):
        space.decode(" ".join(ops + ["skip"]))
    with pytest.raises(ValueError, match=r"expected 22 blocks, got 0"):
        space.decode("")


def test_built_network_names_its_layers_as_the_descriptors_do():
    from spaces.fold import layer_modules

    space = spaces.create("fbnet")
    for ops in (["skip"] * 22, ["k5_e1_g2"] * 22, ["k3_e6", "skip"] * 11):
        candidate = space.decode(" ".join(ops))
        modules = layer_modules(space.build(candidate))
        layers = space.layers(candidate)
        assert list(modules) == [layer.name for layer in layers]
        for layer in layers:
            weight = modules[layer.name].weight
            assert weight.shape[0] == layer.out_shape[0] and weight.numel() == layer.weights
