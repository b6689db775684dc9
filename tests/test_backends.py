"""The export backends' contract (`search.backends.Backend`), run over every registered backend and every registered
space: the module honours the Protocol, says its name, suffix and gate setting, and `export` writes one file that the
backend's own runtime (`outputs`) runs to the logits of what the network computes (`reference`), whose plan the file
holds (`audit`) and whose layers it follows (`layer_errors`). Per-backend behaviour (quantized kernels, refusals,
parity gates) is tested in test_export.py (ONNX) and test_litert.py (LiteRT)."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import optuna
import pytest
import torch

import spaces
from search import backends, promote
from spaces.fold import layer_modules
from tests.test_export import make_space

pytestmark = pytest.mark.slow


def float_network(name: str):
    """A float network of the space with its batch norm settled, and inputs for it: a random fbnet architecture,
    the mobilenetv2 float baseline at the test suite's small digits shape."""
    if name == "fbnet":
        space = spaces.create("fbnet")
        rng = random.Random(0)
        candidate = space.sample(optuna.trial.FixedTrial({f"op.{b}": rng.choice(space.ops) for b in space.block_names}))
    else:
        space = make_space("channel")
        candidate = space.sample(optuna.trial.FixedTrial(space.baselines()["float"]))
    torch.manual_seed(0)
    net = space.build(candidate)
    x = torch.randn(16, *space.input_shape)
    with torch.no_grad():
        net.train()(x)  # batch-norm statistics that are not the identity
    return space, candidate, net.eval(), x


@pytest.fixture(scope="module", params=sorted(spaces.SPACES))
def network(request):
    return float_network(request.param)


@pytest.mark.parametrize("name", sorted(backends.BACKENDS))
def test_every_backend_exports_every_space_to_one_file_its_runtime_runs_as_torch_does(name, network, tmp_path):
    space, candidate, net, x = network
    module = backends.get(name)
    assert isinstance(module, backends.Backend)
    assert module.NAME == name and module.SUFFIX.startswith(".")
    assert module.GATE in {f.name for f in dataclasses.fields(promote.Request)}  # a promote setting
    path = module.export(net, space.input_shape, tmp_path / f"model{module.SUFFIX}")
    assert path.is_file() and path.suffix == module.SUFFIX and [p.name for p in tmp_path.iterdir()] == [path.name]
    with torch.no_grad():
        expected = net(x).numpy()
        computed = module.reference(net, space.input_shape)(x).numpy()
    np.testing.assert_allclose(computed, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())  # float: no rounding
    got = module.outputs(path, x.numpy())
    assert got.shape == (len(x), space.layers(candidate)[-1].out_shape[0])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert module.audit(path, net, space.input_shape) == []
    errors = module.layer_errors(net, path, x.numpy())
    assert not errors or (list(errors) == list(layer_modules(net)) and max(errors.values()) < 1e-4), errors


def test_every_backend_says_what_precisions_its_files_hold():
    """Torch-free, so a config is narrowed by its target's format before anything loads."""
    assert set(backends.HOLDS) == set(backends.BACKENDS)


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="backend: one of onnx, litert, got 'tvm'"):
        backends.get("tvm")
