"""The four plug-in points share one registry shape (`spaces.registry.Registry`): every registered name loads, an
unknown one is one line naming the choices, listing the names imports nothing, and a plug-in registered while the
program runs is found like a shipped one."""
import subprocess
import sys
from types import SimpleNamespace

import pytest

import spaces
from search import backends, data, runners

REGISTRIES = {"space": spaces.SPACES, "backend": backends.BACKENDS, "runner": runners.RUNNERS, "data": data.LOADERS}


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_registered_name_loads(kind):
    registry = REGISTRIES[kind]
    assert registry.kind == kind and len(registry) >= 2
    for name in registry:
        assert registry.load(name) is registry[name] is not None
    with pytest.raises(ValueError, match=f"^{kind}: one of {', '.join(registry)}, got 'nope'$"):
        registry.load("nope")


def test_listing_the_names_imports_no_plug_in():
    code = ("import sys, spaces; from search import backends, runners; "
            "names = [*spaces.SPACES, *backends.BACKENDS, *runners.RUNNERS]; "
            "print(sorted(m for m in ('torch', 'onnx', 'ai_edge_litert', 'spaces.mobilenetv2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]


# A do-nothing backend, registered from here: nothing in the package names it.
NULL = SimpleNamespace(NAME="null", SUFFIX=".null", GATE="min_agreement", export=lambda net, shape, path: path,
                       outputs=lambda path, x: x, reference=lambda net, shape: net, audit=lambda path, net, shape: [],
                       layer_errors=lambda net, path, x: {})
HALF = SimpleNamespace(NAME="half", SUFFIX=".half", export=lambda net, shape, path: path)


def test_a_backend_registered_at_run_time_is_one_like_the_shipped_ones(monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", spaces.registry.Registry("backend", backends.BACKENDS.entries))
    backends.BACKENDS.register("null", f"{__name__}:NULL")
    assert backends.get("null") is NULL and "null" in backends.BACKENDS
    with pytest.raises(ValueError, match="backend: one of onnx, litert, null, got 'tvm'"):
        backends.get("tvm")
    backends.BACKENDS.register("half", f"{__name__}:HALF")
    with pytest.raises(TypeError, match=f"backend half: {__name__}:HALF lacks GATE, outputs, reference, audit, "
                                        "layer_errors"):
        backends.get("half")
