"""search.domain: the networks a predictor was calibrated on, as bounds, and why a network lies outside them."""
from __future__ import annotations

import json

import pytest

from search import latency
from search.domain import Domain
from spaces import Layer


def net(channels: int, size: int, bits: int = 32) -> list[Layer]:
    """A stem, a depthwise layer and a classifier: enough to exercise every bound."""
    return [Layer("stem", "conv", (3, size, size), (channels, size // 2, size // 2), 3, 2, bits=bits),
            Layer("dw", "conv", (channels, size // 2, size // 2), (channels, size // 2, size // 2), 3, 1, channels,
                  bits=bits),
            Layer("fc", "linear", (channels, 1, 1), (10, 1, 1), bits=bits)]


CALIBRATED = [net(16, 32), net(64, 64), net(32, 224)]


def test_the_bounds_are_those_of_the_networks_it_was_fitted_on():
    d = Domain.of(CALIBRATED)
    assert d.networks == 3 and d.resolution == (32, 224) and d.channels == (16, 64) and d.bits == (32,)  # convs only
    assert d.spatial == (1, 112)
    assert d.network_macs == (min(sum(l.macs for l in n) for n in CALIBRATED),
                              max(sum(l.macs for l in n) for n in CALIBRATED))
    for n in CALIBRATED:
        assert d.outside(n) == []
    assert d.outside(net(24, 96)) == []  # between them on every bound: interpolated


def test_a_network_outside_is_told_which_bound_it_crosses():
    d = Domain.of(CALIBRATED)
    reasons = d.outside(net(16, 8))
    assert any(r.startswith("input resolution 8 px below the calibrated 32-224 px") for r in reasons)
    assert any(r.startswith("network MACs") and "below" in r for r in reasons)
    assert d.outside(net(128, 64)) and any("most channels 128 above" in r for r in d.outside(net(128, 64)))
    assert d.outside(net(32, 64, bits=8)) == ["8-bit layers, never measured (calibrated: 32)"]


def test_the_domain_travels_in_the_predictor_file_as_plain_numbers(tmp_path):
    d = Domain.of(CALIBRATED)
    p = latency.Predictor("t", {32: "fp32"}, False, {"dense.fp32.macs": 1.0}, domain=d.as_dict())
    path = p.save(tmp_path / "p.json")
    assert json.loads(path.read_text())["domain"]["resolution"] == [32, 224]
    loaded = latency.Predictor.load(path)
    assert Domain.from_dict(loaded.domain) == d
    assert loaded.extrapolated(net(24, 96)) == [] and loaded.extrapolated(net(16, 8))


def test_a_predictor_without_a_domain_says_so():
    p = latency.Predictor("t", {32: "fp32"}, False, {"dense.fp32.macs": 1.0})
    assert p.extrapolated(net(16, 32)) == ["calibrated domain unknown (fit the predictor again to record it)"]


def test_the_shipped_phone_predictor_knows_its_domain_and_the_default_networks_lie_outside_it():
    """The FBNet networks timed on a Samsung A50 (32 x 32 px, 30-105 MMACs) and the published MobileNets (96-224
    px, 14-569 MMACs), all float: the default study's 28 x 28 networks of about 1.5 MMACs are extrapolations, and
    the predictor says so."""
    import spaces
    import yaml

    from search.config import CONF_DIR

    p = latency.Predictor.load(CONF_DIR / "predictors" / "snapdragon665.json")
    assert Domain.from_dict(p.domain).resolution == (32, 224)
    conf = yaml.safe_load((CONF_DIR / "space" / "mobilenetv2.yaml").read_text())
    space = spaces.create(**(conf | {"input_shape": (1, 28, 28), "num_classes": 10}))
    float_net = space.layers(spaces.Candidate.of(space.name, space.baselines()["float"]))
    reasons = p.extrapolated(float_net)
    assert any(r.startswith("network MACs") for r in reasons)
    assert any(r.startswith("input resolution 28 px") for r in reasons)


def test_a_domain_needs_networks():
    with pytest.raises(ValueError):
        Domain.of([])
