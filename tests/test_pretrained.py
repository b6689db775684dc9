"""spaces.pretrained and the torchvision-layout space: a trained torchvision MobileNetV2's state_dict becomes the
full-width network of `space=mobilenetv2-imagenet`, computing the same logits; a file that does not fit is refused
naming the key. Nothing is downloaded: the torchvision networks here have random weights and batch-norm statistics."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
import yaml

import spaces
from search import describe
from spaces.importance import sort_channels
from spaces.pretrained import load_torchvision, read
from tests.nets import randomize_bn

CONF = Path(__file__).resolve().parents[1] / "conf" / "space" / "mobilenetv2-imagenet.yaml"


def space(classes: int = 1000, size: int = 96):
    return spaces.create(**(yaml.safe_load(CONF.read_text()) | {"input_shape": (3, size, size), "num_classes": classes}))


def trained_torchvision(classes: int = 1000) -> torch.nn.Module:
    """torchvision's MobileNetV2 with random weights and batch-norm parameters, and batch-norm statistics measured on
    random images (as training leaves them). With random statistics instead, its ReLU6s saturate and every image gets
    the same logits to 7e-8 (measured), so no comparison of logits could fail; with these, halving the input moves
    them by 15%."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=classes)
    randomize_bn(net)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the statistics of the one batch below
    with torch.no_grad():
        net.train()(torch.randn(16, 3, 96, 96, generator=torch.Generator().manual_seed(9)))
    return net.eval()


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0])
def test_the_space_at_each_width_is_torchvisions_network(width):
    s = space(size=224)
    c = spaces.Candidate.of(s.name, s.baselines()["float"] | {n: width for n in s.width_names})
    mine = [(l.in_shape, l.out_shape, l.kernel, l.stride, l.groups) for l in s.layers(c)]
    theirs = [(l.in_shape, l.out_shape, l.kernel, l.stride, l.groups) for l in describe.built("mobilenet_v2", width, 224)]
    assert mine == theirs


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_state_dict_gives_the_same_logits(tmp_path, suffix):
    tv = trained_torchvision()
    path = tmp_path / f"mobilenet_v2{suffix}"
    if suffix == ".pth":
        torch.save(tv.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(tv.state_dict(), str(path))
    s = space()
    net = s.subnet(s.supernet(), spaces.Candidate.of(s.name, s.baselines()["float"]))  # plain float, full width
    state, ordered = read(path)
    assert ordered == (suffix == ".pth")
    load_torchvision(net, state, ordered=ordered)
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = tv(x), net.eval()(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4


def test_channels_sorted_by_importance_keep_the_function_and_come_most_read_first():
    """A narrower width keeps the first channels: sorted, they are the ones the next layers read most (the L1 norm
    of the weights reading them), and the network still computes torchvision's logits."""
    s = space()
    net = s.subnet(s.supernet(), spaces.Candidate.of(s.name, s.baselines()["float"])).eval()
    load_torchvision(net, trained_torchvision().state_dict())
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = net(x)
        sort_channels(net)
        got = net(x)
    # summation order only: measured 1.7e-6 (AVX-512 and torch capped at AVX2); one channel group permuted in its
    # writers and not its readers: 0.12
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    blocks = net.blocks
    stem = blocks[0].project.conv.weight.abs().sum((0, 2, 3))  # block 0 does not expand: its projection reads
    stage = sum(b.expand.conv.weight.abs().sum((0, 2, 3)) for b in blocks[2:4])  # the 24-channel stage's tensor
    hidden = blocks[5].project.conv.weight.abs().sum((0, 2, 3))  # one block's expanded channels
    for reads in (stem, stage, hidden):
        assert (reads[:-1] >= reads[1:]).all()


def test_a_new_class_count_keeps_the_networks_own_classifier():
    s = space(classes=10)
    net = s.supernet()
    before = net.classifier.weight.detach().clone()
    state = trained_torchvision().state_dict()
    load_torchvision(net, state, new_classifier=True)
    assert torch.equal(net.classifier.weight, before)
    assert torch.equal(net.head.conv.weight, state["features.18.0.weight"])
    with pytest.raises(ValueError, match=r"classifier.1.weight: shape \(1000, 1280\) in the file, \(10, 1280\)"):
        load_torchvision(s.supernet(), state)


def test_two_keys_swapped_are_refused_naming_one_and_nothing_is_loaded():
    state = trained_torchvision().state_dict()
    keys = list(state)
    i, j = keys.index("features.4.conv.0.0.weight"), keys.index("features.5.conv.0.0.weight")  # same shape
    keys[i], keys[j] = keys[j], keys[i]
    swapped = {k: state[k] for k in keys}
    s = space()
    net = s.supernet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"features.5.conv.0.0.weight: out of place .*features.4.conv.0.0.weight"):
        load_torchvision(net, swapped)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("change,message", [
    (lambda st: st.pop("features.7.conv.1.1.running_var"), r"features.7.conv.1.1.running_var: missing"),
    (lambda st: st.__setitem__("features.19.0.weight", torch.zeros(1)), r"features.19.0.weight: not a key"),
    (lambda st: st.__setitem__("features.2.conv.0.0.weight", torch.zeros(96, 16, 3, 3)),
     r"features.2.conv.0.0.weight: shape \(96, 16, 3, 3\) in the file, \(96, 16, 1, 1\)"),
])
def test_a_file_that_does_not_fit_is_one_line_naming_the_key(change, message):
    state = dict(trained_torchvision().state_dict())
    change(state)
    with pytest.raises(ValueError, match=message):
        load_torchvision(space().supernet(), state)


def test_a_file_that_is_not_weights_is_refused(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="x.pth: not a weights-only torch file"):
        read(tmp_path / "x.pth")
    torch.save({"a": 1}, tmp_path / "y.pth")
    with pytest.raises(ValueError, match="y.pth: not a state_dict"):
        read(tmp_path / "y.pth")
    with pytest.raises(ValueError, match="no such file"):
        read(tmp_path / "missing.pth")


def images(root: Path, per_class: int = 12, size: int = 40) -> Path:
    """A folder of generated RGB images in two classes (nothing downloaded)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_supernet_init_starts_the_supernet_from_the_file(tmp_path, suffix):
    """`supernet.init`: the weights file crosses to the worker as plain arrays and the full-width network starts
    from it (no training step here, so the trained state is the file's, up to batch-norm statistics)."""
    import numpy as np

    from search import data as datasets
    from search import supernet

    d = datasets.load({"name": "imagefolder", "root": str(images(tmp_path / "img")), "image_size": 32,
                       "val_size": 0.25, "test_size": 0.25}, 0, tmp_path / "cache")
    tv = trained_torchvision()
    weights = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(tv.state_dict(), weights)
    else:  # safetensors sorts its keys: the order was checked on the driver, not again on the worker
        from safetensors.torch import save_file

        save_file(tv.state_dict(), str(weights))
    settings = yaml.safe_load(CONF.read_text()) | {"input_shape": d.input_shape, "num_classes": d.num_classes}
    init = supernet.initial_weights(settings, str(weights))
    steps = supernet.train(settings, d, {"epochs": 1, "batch_size": 10_000, "lr": 0.1, "random_subnets": 1}, 0, init)
    try:
        while True:
            next(steps)
    except StopIteration as done:
        state = done.value["state"]
    ours, theirs = state["blocks.5.expand.conv.weight"], tv.state_dict()["features.6.conv.0.0.weight"].numpy()
    assert (np.sort(ours, None) == np.sort(theirs, None)).all()  # the file's weights, channels sorted by importance
    assert state["classifier.weight"].shape == (2, 1280)  # a new classifier: two classes here
    assert supernet.init_digest(init) != supernet.init_digest({**init, "classifier.1.bias": init["classifier.1.bias"] + 1})


@pytest.mark.slow  # runs the command (data, predictor and weights checked before anything is written)
def test_a_weights_file_that_does_not_fit_the_space_stops_the_study_naming_the_key(tmp_path):
    from tests.cli import command

    torch.save(trained_torchvision().state_dict(), tmp_path / "w.pth")
    root = images(tmp_path / "img")
    done = command(tmp_path, "search", "space=mobilenetv2", "data=imagefolder", f"data.root={root}",
                   f"supernet.init={tmp_path / 'w.pth'}", "study.name=init-check", timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: supernet.init: features.0.0.weight: shape (32, 3, 3, 3) in the file, (16, 3, 3, 3) in the network")
    assert not (tmp_path / "outputs").exists()
