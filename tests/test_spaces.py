"""Every registered search space: sampling, building, layer descriptors against the real modules,
pruning, bad settings and the width -> MACs relation. Tiny inputs: the space is built for
MNIST-sized images, here an odd, non-square (3, 13, 11) one keeps it fast and catches H/W mix-ups."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from optuna.trial import FixedTrial
from torch import nn

import spaces
from spaces import SPACES, Candidate, Layer
from spaces.precision import FLOAT_BITS
from spaces.prune import strongest_filters
from spaces.slim import SlimLinear
from tests.nets import randomize_bn

ROOT = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONF = Path(__file__).resolve().parents[1] / "conf" / "space"
GRANULARITIES = ["channel", "weight"]
INPUT = (3, 13, 11)
CLASSES = 10
N_RANDOM = 10  # candidates for the sampling tests
N_BUILD = 3  # candidates per build test (each builds and runs a network)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: threads only add overhead (and contend with anything else running)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Elastic resolution depends on the data's size, so no preset turns it on; the ImageNet preset's cases do (they have
# elastic depth too), so the contract below covers every elastic dimension, and the small preset's cover none.
ELASTIC = {"mobilenetv2-imagenet": {"resolutions": [9, 11]}}


def settings(name: str, **overrides: Any) -> dict[str, Any]:
    conf = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    return conf | {"input_shape": INPUT, "num_classes": CLASSES} | ELASTIC.get(name, {}) | overrides


def make(name: str, granularity: str, **overrides: Any):
    return spaces.create(**settings(name, granularity=granularity, **overrides))


# Every config of conf/space/ (a registered space, or a preset of one: mobilenetv2-imagenet), by file name. Only
# those with a weight-sharing supernet (widths, bits, sparsity): fbnet has none and is tested in test_fbnet.py.
PRESETS = {p.stem: yaml.safe_load(p.read_text())["name"] for p in sorted(CONF.glob("*.yaml"))}
SUPERNET_SPACES = [n for n, space in PRESETS.items() if hasattr(SPACES[space], "supernet")]
CASES = [(n, g) for n in SUPERNET_SPACES for g in GRANULARITIES]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_registered_space_honours_the_space_contract(name):
    space = spaces.create(**settings(name))
    assert isinstance(space, spaces.Space) and space.name == PRESETS[name]
    assert isinstance(space, spaces.SearchSpace) == (name in SUPERNET_SPACES)  # weight sharing: all of it or none
    assert set(SPACES) <= set(PRESETS.values())


@pytest.fixture(params=CASES, ids=[f"{n}-{g}" for n, g in CASES])
def case(request) -> tuple[str, str]:
    return request.param


@pytest.fixture
def space(case):
    return make(*case)


def random_candidates(space, n: int = N_RANDOM, seed: int = 0) -> list[Candidate]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def full(space, widths: Candidate | dict, **params: Any) -> Candidate:
    """A complete float, unpruned candidate at the given widths (plus any param overrides)."""
    w = widths.as_dict() if isinstance(widths, Candidate) else widths
    return Candidate.of(space.name, space.baselines()["float"] | w | params)


def supernet(space, seed: int = 0):
    torch.manual_seed(seed)
    net = space.supernet()
    randomize_bn(net, seed)
    return net.eval()


def batch(n: int = 2, seed: int = 0, shape: tuple[int, ...] = INPUT) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def conv_of(unit: nn.Module) -> nn.Module:
    return unit if isinstance(unit, SlimLinear) else unit.conv


# --- sampling ----------------------------------------------------------------------------------


def test_registry_and_create():
    assert SPACES and all(cls.name == key for key, cls in SPACES.items())
    for name in SPACES:
        assert (CONF / f"{name}.yaml").exists(), f"no default config for space {name}"
    for name in SUPERNET_SPACES:
        s = make(name, "channel")
        assert isinstance(s, SPACES[PRESETS[name]]) and s.name == PRESETS[name]


def test_sampled_params_are_configured_choices(space, case):
    conf = settings(case[0])
    expected = (set(space.elastic)
                | {f"bits.{n}" for n in space.layer_names}
                | {f"sparsity.{n}" for n in space.prunable})
    seen: dict[str, set] = {}
    for c in random_candidates(space):
        assert c.space == space.name
        p = c.as_dict()
        assert set(p) == expected
        for key, value in p.items():
            choices = {"width": conf["widths"], "bits": conf["bits"], "sparsity": conf["sparsity"],
                       "depth": space.elastic.get(key), "resolution": space.elastic.get(key)}[key.split(".")[0]]
            assert value in choices, (key, value)
            seen.setdefault(key, set()).add(value)
    # random sampling over 10 candidates really varies the params: every configured choice of
    # every kind shows up, and most params take more than one value
    for kind, choices in (("width", conf["widths"]), ("bits", conf["bits"]), ("sparsity", conf["sparsity"])):
        values = set().union(*(v for k, v in seen.items() if k.startswith(kind + ".")))
        assert values == set(choices), kind
    assert sum(len(v) > 1 for v in seen.values()) > len(seen) // 2


def test_prunable_layers(space):
    assert space.prunable
    if space.granularity == "weight":
        assert space.prunable == space.layer_names
    else:
        assert space.prunable == [n for n in space.layer_names if n.endswith(".expand")]


def test_layer_and_width_names(space):
    assert len(set(space.layer_names)) == len(space.layer_names)
    assert space.layer_names[0] == "stem" and space.layer_names[-2:] == ["head", "classifier"]
    assert len(set(space.width_names)) == len(space.width_names)
    assert all(n.startswith("width.") for n in space.width_names)


def test_fixed_trial_rebuilds_equal_candidate(space):
    for c in random_candidates(space, seed=1):
        again = space.sample(FixedTrial(c.as_dict()))
        assert again == c and hash(again) == hash(c)
        assert again is not c


def test_candidate_hashable_and_order_independent(space):
    cands = random_candidates(space, seed=2)
    params = cands[0].as_dict()
    reversed_params = dict(reversed(list(params.items())))
    a, b = Candidate.of(space.name, params), Candidate.of(space.name, reversed_params)
    assert a == b and hash(a) == hash(b) and a == cands[0]
    assert len({a, b, cands[0]}) == 1
    assert len(set(cands + cands)) == len(set(cands))
    assert Candidate.of("other", params) != a
    assert a["width.stem"] == params["width.stem"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.space = "x"
    # it is what crosses process borders: a plain, picklable value
    assert pickle.loads(pickle.dumps(a)) == a


def test_baselines_are_valid_candidates(space):
    bases = space.baselines()
    assert set(bases) == {"float", "int8"}
    sampled_keys = set(random_candidates(space, n=1)[0].as_dict())
    for kind, params in bases.items():
        assert set(params) == sampled_keys
        c = space.sample(FixedTrial(params))
        assert c == Candidate.of(space.name, params)
        bits = 32 if kind == "float" else 8
        for key, value in params.items():
            if key.startswith("width."):
                assert value == 1.0
            elif key in space.elastic:  # full depth, full resolution
                assert value == max(space.elastic[key])
            elif key.startswith("bits."):
                assert value == bits
            else:
                assert value == 0.0
        assert all(layer.bits == bits for layer in space.layers(c))


def test_the_cheapest_network_at_each_bit_width_costs_least(space):
    """What a latency budget's floor is priced on (preflight): every layer at `bits`, and no drawn network has fewer
    MACs or weights (neither depends on bits)."""
    for bits in space.bits:
        cheapest = space.cheapest(bits)
        assert cheapest == space.sample(FixedTrial(cheapest.as_dict()))  # a candidate of the space
        layers = space.layers(cheapest)
        assert {layer.bits for layer in layers} == {bits}
        for c in random_candidates(space, n=8, seed=bits):
            drawn = space.layers(c)
            assert sum(x.macs for x in layers) <= sum(x.macs for x in drawn)
            assert sum(x.weights for x in layers) <= sum(x.weights for x in drawn)


def test_baselines_without_8_bits(space):
    s = make(space.name, space.granularity, bits=[4, 32])
    assert set(s.baselines()) == {"float"}


# --- building ----------------------------------------------------------------------------------


def test_subnet_forward_shape(space):
    sup = supernet(space)
    x = batch()
    assert sup(x).shape == (2, CLASSES)
    for c in random_candidates(space, n=N_BUILD, seed=3) + [Candidate.of(space.name, space.baselines()["int8"])]:
        net = space.subnet(sup, c).eval()
        with torch.no_grad():
            y = net(x)
        assert y.shape == (2, CLASSES) and torch.isfinite(y).all()
        # the subnet is a copy: the supernet's weights are never shared
        assert all(not p.data_ptr() == q.data_ptr() for p in net.parameters() for q in sup.parameters())


def test_subnet_training_does_not_reach_supernet(space):
    sup = supernet(space)
    before = {k: v.clone() for k, v in sup.state_dict().items()}
    net = space.subnet(sup, random_candidates(space, n=1, seed=4)[0]).train()
    net(batch()).sum().backward()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, sup.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in sup.parameters())


def width_candidates(space) -> list[Candidate]:
    small, large = space.extremes()
    g = torch.Generator().manual_seed(0)
    return [small, large] + [space.sample_active(g) for _ in range(N_BUILD)]


def test_random_and_extreme_elastic_choices(space):
    """The sandwich rule reaches every elastic dimension: its ends are the smallest and largest choice of each, and
    random draws take every choice of each (64 draws: a width is missed with probability 4 x 0.75^64, 1e-8)."""
    small, large = space.extremes()
    assert set(small.as_dict()) == set(space.elastic) == set(large.as_dict())
    assert set(space.width_names) <= set(space.elastic)
    assert all(v == min(space.elastic[k]) for k, v in small.as_dict().items())
    assert all(v == max(space.elastic[k]) for k, v in large.as_dict().items())
    g = torch.Generator().manual_seed(0)
    ws = [space.sample_active(g) for _ in range(64)]
    for name, choices in space.elastic.items():
        assert {w[name] for w in ws} == set(choices), name
    g2 = torch.Generator().manual_seed(0)
    assert [space.sample_active(g2) for _ in range(64)] == ws  # reproducible from the generator


def test_supernet_at_widths_equals_float_subnet(space):
    """Running the supernet sliced to a candidate's widths is the same function as the physically
    sized subnet of the float, unpruned candidate at those widths: checks the weight slicing."""
    sup = supernet(space, seed=5)
    x = batch(seed=5)
    outputs = []
    for w in width_candidates(space):
        c = full(space, w)
        space.set_active(sup, c)
        net = space.subnet(sup, c).eval()
        x = batch(seed=5, shape=space.input_shape_of(c))
        with torch.no_grad():
            y_sup, y_net = sup(x), net(x)
        torch.testing.assert_close(y_sup, y_net, rtol=1e-4, atol=1e-5)
        outputs.append(y_sup)
    # different widths are different functions (so the comparison above has teeth)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


def test_residual_only_where_shapes_match(space):
    """Inverted residual blocks add their input exactly when stride is 1 and channels agree."""
    net = supernet(space)
    arch = space.arch(full(space, space.extremes()[1]))
    h, w = INPUT[1:]
    h, w = (h - 1) // space.stem_stride + 1, (w - 1) // space.stem_stride + 1
    residuals = 0
    with torch.no_grad():
        for b, block in zip(arch.blocks, net.blocks):
            x = torch.randn(2, b.cin, h, w, generator=torch.Generator().manual_seed(len(b.name)))
            y = block.project(block.dw(block.expand(x) if block.expand is not None else x))
            if b.stride == 1 and b.cin == b.cout:
                torch.testing.assert_close(block(x), x + y)
                residuals += 1
            else:
                torch.testing.assert_close(block(x), y)
            h, w = (h - 1) // b.stride + 1, (w - 1) // b.stride + 1
    assert residuals > 0


def test_set_active_back_to_full_restores_supernet(space):
    sup = supernet(space)
    x = batch()
    with torch.no_grad():
        ref = sup(x)
        small, large = space.extremes()
        space.set_active(sup, full(space, small))
        assert not torch.allclose(sup(x), ref, atol=1e-4)
        space.set_active(sup, full(space, large))
        torch.testing.assert_close(sup(x), ref)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_elastic_depth_keeps_a_stages_first_blocks_by_name(granularity):
    """A shallower stage keeps its first blocks, named as in the full network, so they are the supernet's own
    weights; the bits and sparsity of a block it drops change no layer, so such candidates are one network."""
    space = make("mobilenetv2-imagenet", granularity)
    sup = supernet(space, seed=13)
    large = space.extremes()[1].as_dict()
    key, choices = next(iter(space.depths.items()))
    shallow = full(space, large | {key: min(choices)})
    every = [b.name for b in space.arch(full(space, large)).blocks]
    kept = [b.name for b in space.arch(shallow).blocks]
    dropped = [name for name in every if name not in kept]
    assert len(dropped) == max(choices) - min(choices)
    start = every.index(dropped[0])
    assert every[start:start + len(dropped)] == dropped  # the stage's last blocks
    net = space.subnet(sup, shallow)
    for name, unit in net.units().items():  # full width, dense: the supernet's tensors themselves
        assert torch.equal(conv_of(unit).weight, conv_of(sup.units()[name]).weight), name
    other = Candidate.of(space.name, shallow.as_dict() | {f"bits.{dropped[0]}.dw": 8,
                                                          f"sparsity.{dropped[-1]}.expand": max(space.sparsities)})
    assert other != shallow and space.layers(other) == space.layers(shallow)
    assert spaces.candidate.identity(space, other) == spaces.candidate.identity(space, shallow)
    assert space.decode(space.encode(other)) == other


def test_elastic_resolution_scales_every_feature_map_and_keeps_the_weights():
    space = make("mobilenetv2-imagenet", "channel")
    large = space.extremes()[1].as_dict()
    at = [full(space, large | {"resolution": r}) for r in space.resolutions]
    assert space.resolutions == [9, 11, INPUT[1]]
    assert [space.input_shape_of(c) for c in at] == [(3, 9, 8), (3, 11, 9), INPUT]  # the width scaled with it
    assert [space.layers(c)[0].in_shape for c in at] == [space.input_shape_of(c) for c in at]
    macs = [total_macs(space, c) for c in at]
    assert macs == sorted(macs) and macs[0] < macs[-1]
    assert len({sum(layer.params for layer in space.layers(c)) for c in at}) == 1
    with pytest.raises(ValueError, match="resolution"):
        space.decode(space.encode(at[0]).replace("resolution=9", "resolution=10"))


# --- descriptors against the built modules -------------------------------------------------------


def shape3(t: torch.Tensor) -> tuple[int, int, int]:
    s = tuple(t.shape[1:])
    return s if len(s) == 3 else (s[0], 1, 1)


def check_descriptors(space, net: nn.Module, candidate: Candidate) -> list[Layer]:
    layers = space.layers(candidate)
    units = net.units()
    assert [l.name for l in layers] == list(units)
    assert [n for n in space.layer_names if n in units] == list(units)  # a dropped block's layers are left out
    seen: dict[str, tuple] = {}
    hooks = [conv_of(u).register_forward_hook(
        lambda m, inp, out, name=name: seen.__setitem__(name, (shape3(inp[0]), shape3(out))))
        for name, u in units.items()]
    try:
        with torch.no_grad():
            net.eval()(batch(shape=space.input_shape_of(candidate)))
    finally:
        for h in hooks:
            h.remove()
    p = candidate.as_dict()
    for layer in layers:
        m = conv_of(units[layer.name])
        in_shape, out_shape = seen[layer.name]
        assert layer.in_shape == in_shape, layer.name
        assert layer.out_shape == out_shape, layer.name
        assert layer.weights == m.weight.numel(), layer.name
        assert layer.params == m.weight.numel() + out_shape[0], layer.name
        assert layer.macs == m.weight.numel() * out_shape[1] * out_shape[2], layer.name
        assert layer.bits == m.bits == p[f"bits.{layer.name}"], layer.name
        # the input is quantized at the layer's bits: by the layer, or already by its producer (plan_precision)
        assert m.act.bits in (m.bits, 32), layer.name
        assert layer.granularity == space.granularity
        if layer.name == "classifier":
            assert layer.kind == "linear" and isinstance(m, nn.Linear)
            assert (layer.kernel, layer.stride, layer.groups) == (1, 1, 1)
        else:
            assert layer.kind == "conv"
            assert layer.kernel == m.kernel_size[0] == m.kernel_size[1], layer.name
            assert layer.stride == m.stride[0] == m.stride[1], layer.name
            assert layer.groups == m.groups, layer.name
    return layers


def test_descriptors_match_modules(space):
    sup = supernet(space)
    cands = random_candidates(space, n=N_BUILD, seed=6)
    cands += [full(space, w) for w in space.extremes()]
    for c in cands:
        layers = check_descriptors(space, space.subnet(sup, c), c)
        assert layers[0].in_shape == space.input_shape_of(c)
        assert layers[-1].out_shape == (CLASSES, 1, 1)
        # consecutive layers chain: each one's input is the previous one's output
        for prev, cur in zip(layers, layers[1:]):
            if cur.kind == "conv":
                assert cur.in_shape == prev.out_shape, cur.name


def test_descriptor_dicts(space):
    c = random_candidates(space, n=1, seed=7)[0]
    for layer in space.layers(c):
        d = layer.as_dict()
        assert d["name"] == layer.name and d["macs"] == layer.macs and d["weights"] == layer.weights
        assert d["params"] == layer.params and d["sparsity"] == layer.sparsity


# --- pruning -----------------------------------------------------------------------------------


def pruned_candidates(space, seed: int) -> list[Candidate]:
    """Random candidates plus one at the largest sparsity everywhere prunable."""
    cands = random_candidates(space, n=N_BUILD, seed=seed)
    top = max(space.sparsities)
    widths = {n: 1.0 for n in space.width_names} | {"width.s1": min(space.widths)}
    cands.append(full(space, widths, **{f"sparsity.{n}": top for n in space.prunable}))
    return cands


@pytest.mark.parametrize("name", SUPERNET_SPACES)
def test_weight_sparsity_exact_zero_fraction(name):
    space = make(name, "weight")
    sup = supernet(space, seed=8)
    for c in pruned_candidates(space, seed=8):
        p = c.as_dict()
        net = space.subnet(sup, c)
        units = net.units()
        layers = {l.name: l for l in check_descriptors(space, net, c)}
        for layer_name in units:
            m = conv_of(units[layer_name])
            s = p[f"sparsity.{layer_name}"]
            n = m.weight.numel()
            eff = m.weight if m.mask is None else m.weight * m.mask
            zeros = int((eff == 0).sum())
            assert zeros / n == round(s * n) / n, (layer_name, s, n, zeros)
            assert (m.mask is None) == (round(s * n) == 0)
            d = layers[layer_name]
            assert d.sparsity == s and d.weights == n
            assert d.nonzero_weights == n - zeros
            # shapes stay dense with unstructured pruning
            assert d.out_shape[0] == m.weight.shape[0]
            if m.mask is not None:
                # the zeros are the smallest magnitudes of this layer's weight
                kept, pruned = m.weight.abs()[m.mask == 1], m.weight.abs()[m.mask == 0]
                assert pruned.max() <= kept.min()


@pytest.mark.parametrize("name", SUPERNET_SPACES)
def test_weight_sparsity_mask_applied_in_forward(name):
    space = make(name, "weight")
    sup = supernet(space, seed=9)
    top = max(space.sparsities)
    dense = full(space, space.extremes()[1])
    sparse = full(space, space.extremes()[1], **{f"sparsity.{n}": top for n in space.prunable})
    x = batch()
    with torch.no_grad():
        assert not torch.allclose(space.subnet(sup, dense).eval()(x), space.subnet(sup, sparse).eval()(x), atol=1e-4)
        # masking the dense subnet's weights by hand gives the sparse subnet
        net = space.subnet(sup, dense).eval()
        for unit_name, u in space.subnet(sup, sparse).units().items():
            m = conv_of(net.units()[unit_name])
            m.weight.mul_(conv_of(u).mask)
        torch.testing.assert_close(net(x), space.subnet(sup, sparse).eval()(x))


@pytest.mark.parametrize("sparsity", [None, [0.0, 0.3, 0.9]], ids=["default", "uneven"])
@pytest.mark.parametrize("name", SUPERNET_SPACES)
def test_channel_pruning_shapes_and_strongest_filters(name, sparsity):
    # "uneven": fractions that do not land on a multiple of 4 channels, so the achieved
    # sparsity differs from the requested one
    space = make(name, "channel", **({"sparsity": sparsity} if sparsity else {}))
    sup = supernet(space, seed=10)
    sup_units = sup.units()
    checked = 0
    for c in pruned_candidates(space, seed=10):
        p = c.as_dict()
        arch = space.arch(c)
        net = space.subnet(sup, c)
        units = net.units()
        layers = {l.name: l for l in check_descriptors(space, net, c)}
        for b in arch.blocks:
            if not b.expand:
                assert f"{b.name}.expand" not in layers
                continue
            e, dw, pr = (f"{b.name}.{part}" for part in ("expand", "dw", "project"))
            full_hidden = b.cin * b.ratio
            s = p[f"sparsity.{e}"]
            kept = layers[e].out_shape[0]
            # the rounded count the descriptor says, and the module really has it: the nearest multiple of 4, or
            # torchvision's rounding (the nearest multiple of 8, one more 8 where that falls 10% short)
            step = 8 if space.rounding == "torchvision" else 4
            assert kept % step == 0 and step <= kept <= full_hidden
            assert abs(kept - full_hidden * (1 - s)) <= step / 2 or kept == step or (
                step == 8 and kept - 8 < 0.9 * full_hidden * (1 - s))
            if s == 0.0:
                assert kept == full_hidden
            if sparsity and s == 0.3 and round(full_hidden * 0.7, 6) % step:
                assert layers[e].sparsity != pytest.approx(s)  # rounding changed it
            assert units[e].conv.weight.shape == (kept, b.cin, 1, 1)
            assert units[dw].conv.weight.shape == (kept, 1, space.kernel, space.kernel)
            assert units[pr].conv.weight.shape == (b.cout, kept, 1, 1)
            assert layers[dw].in_shape[0] == layers[dw].out_shape[0] == layers[pr].in_shape[0] == kept
            assert layers[dw].groups == kept
            # descriptor sparsity is what was achieved, the other layers of the block have none
            assert layers[e].sparsity == pytest.approx(1 - kept / full_hidden)
            assert layers[dw].sparsity == 0.0 and layers[pr].sparsity == 0.0
            assert layers[e].nonzero_weights == layers[e].weights
            # the kept filters are the strongest (L1) of the supernet's slice, in order
            w_sup = sup_units[e].conv.weight[:full_hidden, : b.cin]
            norms = w_sup.abs().sum((1, 2, 3))
            idx = torch.tensor(sorted(norms.topk(kept).indices.tolist()))
            assert torch.equal(strongest_filters(w_sup, kept), idx)
            dropped = torch.ones(full_hidden, dtype=torch.bool)
            dropped[idx] = False
            if dropped.any():
                assert norms[idx].min() >= norms[dropped].max()
            assert torch.equal(units[e].conv.weight, w_sup[idx])
            assert torch.equal(units[dw].conv.weight, sup_units[dw].conv.weight[idx])
            assert torch.equal(units[pr].conv.weight, sup_units[pr].conv.weight[: b.cout, idx])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(getattr(units[e].bn, attr), getattr(sup_units[e].bn, attr)[idx])
                assert torch.equal(getattr(units[dw].bn, attr), getattr(sup_units[dw].bn, attr)[idx])
            # no mask: channel pruning is in the shapes
            assert units[e].conv.mask is None
            checked += kept < full_hidden
    assert checked > 0  # some block really lost channels


@pytest.mark.parametrize("name", SUPERNET_SPACES)
def test_channel_pruning_equals_masking_hidden_channels(name):
    """The pruned subnet computes what the full-width float network computes with the dropped
    hidden channels zeroed (their batch norm output set to 0 after ReLU6 is a zero input to
    the projection): pruning removes exactly those channels, nothing else changes."""
    space = make(name, "channel")
    sup = supernet(space, seed=11)
    top = max(space.sparsities)
    large = space.extremes()[1]
    c = full(space, large, **{f"sparsity.{n}": top for n in space.prunable})
    dense = space.subnet(sup, full(space, large)).eval()
    pruned = space.subnet(sup, c).eval()
    arch = space.arch(c)
    units = dense.units()
    with torch.no_grad():
        for b in arch.blocks:
            if not b.expand:
                continue
            w = units[f"{b.name}.project"].conv.weight
            keep = strongest_filters(sup.units()[f"{b.name}.expand"].conv.weight, b.hidden)
            drop = torch.ones(w.shape[1], dtype=torch.bool)
            drop[keep] = False
            w[:, drop] = 0
        x = batch()
        torch.testing.assert_close(pruned(x), dense(x), rtol=1e-4, atol=1e-5)


# --- settings ----------------------------------------------------------------------------------


BAD = [
    ({"widths": [0.25, 0.5, 0.75]}, "widths"),
    ({"widths": [0.5, 1.0, 1.5]}, "widths"),
    ({"widths": [0.0, 1.0]}, "widths"),
    ({"bits": [4, 12, 32]}, "bits"),
    ({"bits": [1, 8, 32]}, "bits"),
    ({"bits": [4, 8, 64]}, "bits"),
    ({"sparsity": [0.0, 0.5, 1.0]}, "sparsity"),
    ({"sparsity": [0.0, -0.25]}, "sparsity"),
    ({"granularity": "filter"}, "granularity"),
    ({"granularity": "Channel"}, "granularity"),
    ({"depths": [0, 2]}, "depths"),
    ({"depths": 2}, "depths"),
    ({"resolutions": [8, 14]}, "resolutions"),  # above the data's 13 px
    ({"resolutions": [8.5]}, "resolutions"),
]


@pytest.mark.parametrize("name", SUPERNET_SPACES)
@pytest.mark.parametrize("override,word", BAD, ids=[f"{k}={v}" for (d, _) in BAD for k, v in d.items()])
def test_bad_settings_raise_value_error(name, override, word):
    with pytest.raises(ValueError, match=word):
        spaces.create(**(settings(name) | override))


@pytest.mark.parametrize("name", SUPERNET_SPACES)
def test_allowed_bits_settings_accepted(name):
    s = make(name, "weight", bits=[2, 3, 4, 8, 16, 32], sparsity=[0.0, 0.9], widths=[0.3, 1.0])
    c = random_candidates(s, n=1)[0]
    assert check_descriptors(s, s.subnet(supernet(s), c), c)


# --- widths and MACs ---------------------------------------------------------------------------


def total_macs(space, c: Candidate) -> int:
    return sum(l.macs for l in space.layers(c))


def test_width_changes_shrink_macs_monotonically(space):
    small, large = (full(space, w) for w in space.extremes())
    assert total_macs(space, small) < total_macs(space, large)
    # raising any single width from the smallest network never lowers the MACs, and every
    # width name matters for some layer
    base = small.as_dict()
    for name in space.width_names:
        macs = [total_macs(space, full(space, base | {name: w})) for w in sorted(space.widths)]
        assert macs == sorted(macs), name
        assert macs[-1] > macs[0], name
    # and lowering any single width from the largest one never raises them
    top = large.as_dict()
    for name in space.width_names:
        macs = [total_macs(space, full(space, top | {name: w})) for w in sorted(space.widths)]
        assert macs == sorted(macs) and macs[-1] > macs[0], name


@pytest.mark.parametrize("widths", [None, [0.3, 0.6, 1.0]], ids=["default", "uneven"])
def test_channel_counts_follow_widths(space, widths):
    """At full width the layers have the configured channels; at any width each layer's
    channels are the configured count times the width, rounded to a multiple of 4 (>= 4)."""
    s = make(space.name, space.granularity, **({"widths": widths} if widths else {}))
    conf = settings(s.name)
    cands = [full(s, w) for w in s.extremes()] + [full(s, c) for c in random_candidates(s, n=4, seed=12)]
    for c in cands:
        p = c.as_dict()
        arch = s.arch(c)
        nominal = [conf["stem"]["channels"] * p["width.stem"]]
        for i, (_, channels, repeats, _) in enumerate(conf["stages"]):
            nominal += [channels * p[f"width.s{i}"]] * repeats
        nominal.append(conf["head"] * p["width.head"])
        actual = [arch.stem, *(b.cout for b in arch.blocks), arch.head]
        assert len(actual) == len(nominal)
        for a, n in zip(actual, nominal):
            assert a % 4 == 0 and a >= 4
            assert abs(a - n) <= 2 or (a == 4 and n < 4), (a, n)
        if all(v == 1.0 for k, v in p.items() if k.startswith("width.")):
            assert actual == [round(n) for n in nominal]
        # the descriptors carry them
        outs = {l.name: l.out_shape[0] for l in s.layers(c)}
        assert outs["stem"] == arch.stem and outs["head"] == arch.head
        assert [outs[f"{b.name}.project"] for b in arch.blocks] == [b.cout for b in arch.blocks]


def test_sparsity_shrinks_macs_with_channel_pruning(space):
    large = space.extremes()[1]
    dense = full(space, large)
    sparse = full(space, large, **{f"sparsity.{n}": max(space.sparsities) for n in space.prunable})
    if space.granularity == "channel":
        assert total_macs(space, sparse) < total_macs(space, dense)
    else:  # dense shapes: same MACs, fewer non-zero weights
        assert total_macs(space, sparse) == total_macs(space, dense)
        assert (sum(l.nonzero_weights for l in space.layers(sparse))
                < sum(l.nonzero_weights for l in space.layers(dense)))


# --- where values are quantized (Net.plan_precision) -----------------------------------------------------------


def _mobilenet(bits: dict[str, int]):
    conf = yaml.safe_load((ROOT / "conf" / "space" / "mobilenetv2.yaml").read_text())
    space = spaces.create(**(conf | {"input_shape": (1, 28, 28), "num_classes": 10}))
    params = space.baselines()["float"] | {f"bits.{n}": bits.get(n, 8) for n in space.layer_names}
    return space.build(Candidate.of(space.name, params))


def test_uniform_int8_quantizes_every_tensor_once_on_8_bits():
    """Integer kernels write 8-bit outputs and residual adds run on integers, so only the image (stem) and the
    pooled values (classifier) are quantized by a layer's own input quantizer."""
    net = _mobilenet({})
    units = net.units()
    own = [name for name, u in units.items() if (u if name == "classifier" else u.conv).act.active]
    assert own == ["stem", "classifier"]
    assert all(u.out.bits == 8 for name, u in units.items() if name != "classifier")
    assert [b.sum.bits for b in net.blocks if b.residual] == [8] * sum(b.residual for b in net.blocks)


def test_an_integer_kernel_writes_on_its_readers_grid_and_a_float_one_leaves_it_to_the_reader():
    net = _mobilenet({"stem": 32, "b0.dw": 8, "b0.project": 4, "b1.expand": 16, "b1.dw": 32})
    u = net.units()
    assert not u["stem"].out.active and u["b0.dw"].conv.act.bits == 8  # float producer: the reader quantizes
    assert u["b0.dw"].out.bits == 4 and not u["b0.project"].conv.act.active  # written on the 4-bit reader's grid
    assert not u["b0.project"].out.active and u["b1.expand"].conv.act.bits == 16  # 4 bits is no integer kernel
    assert u["b1.expand"].out.bits == FLOAT_BITS and not u["b1.dw"].conv.act.active  # 16 bits neither; float reader
