"""Trained weights in torchvision's MobileNetV2 layout (`torchvision.models.mobilenet_v2().state_dict()`, or a
network fine-tuned from it) onto the full-width network of a `mobilenetv2` space with torchvision's layout
(conf/space/mobilenetv2-imagenet.yaml), so a search can start from a user's trained network.

torchvision names a block's layers by position (`features.N.conv.0.0` is the expansion conv of block N-1, or its
depthwise conv where the block does not expand); the space names them by role (`blocks.3.expand.conv`). The key
map is built from the network itself, so it holds for any stages; the quantizers' buffers of the space's network
have no torchvision counterpart and are left as they are. A file that does not match is refused with one line
naming the first key that is missing, unexpected, out of order or of another shape: nothing is loaded then.
Files are read without running code: `.pth` with `weights_only=True`, or safetensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, cast

import torch
from torch import nn

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def key_map(net: nn.Module) -> dict[str, str]:
    """torchvision's key -> the network's, in torchvision's order, for a space network's `units()` (stem, blocks
    with their `expand`, `dw` and `project`, head, classifier)."""
    units = cast(Callable[[], dict[str, nn.Module]], net.units)()
    out: dict[str, str] = {}

    def conv_bn(tv: str, tv_bn: str, unit: str) -> None:
        out[f"{tv}.weight"] = f"{unit}.conv.weight"
        out.update({f"{tv_bn}.{k}": f"{unit}.bn.{k}" for k in BN})

    conv_bn("features.0.0", "features.0.1", "stem")
    blocks = sorted({name.split(".")[0] for name in units if name.startswith("b")}, key=lambda b: int(b[1:]))
    for i, b in enumerate(blocks):
        f = f"features.{i + 1}.conv"
        parts = [p for p in ("expand", "dw") if f"{b}.{p}" in units]
        for j, part in enumerate(parts):  # ConvBNActivation: [conv, bn, relu]
            conv_bn(f"{f}.{j}.0", f"{f}.{j}.1", f"blocks.{i}.{part}")
        conv_bn(f"{f}.{len(parts)}", f"{f}.{len(parts) + 1}", f"blocks.{i}.project")  # plain conv, then bn
    conv_bn(f"features.{len(blocks) + 1}.0", f"features.{len(blocks) + 1}.1", "head")
    out["classifier.1.weight"], out["classifier.1.bias"] = "classifier.weight", "classifier.bias"
    return out


def load_torchvision(net: nn.Module, state: Mapping[str, torch.Tensor], new_classifier: bool = False,
                     ordered: bool = True) -> None:
    """Copy `state` (torchvision's layout) into `net`. With `new_classifier`, a classifier of another class count
    is left out (the network keeps its own, to be trained). ValueError names the first key that does not fit. Keys
    are checked against torchvision's order where the file keeps one (`ordered`: a .pth does, safetensors sorts
    them): two same-shaped layers swapped show only there."""
    mapping = key_map(net)
    own = net.state_dict()
    copy = {}
    for key, target in mapping.items():  # in network order: the first problem named is the earliest layer's
        if key not in state:
            raise ValueError(f"{key}: missing from the file (a torchvision MobileNetV2 state_dict has it)")
        value = state[key]
        if tuple(value.shape) != tuple(own[target].shape):
            if new_classifier and key.startswith("classifier."):
                continue
            raise ValueError(f"{key}: shape {tuple(value.shape)} in the file, {tuple(own[target].shape)} in the network")
        copy[target] = value
    for key in state:
        if key not in mapping:
            raise ValueError(f"{key}: not a key of torchvision's MobileNetV2 with these stages")
    for want, got in zip(mapping, state) if ordered else ():
        if want != got:
            raise ValueError(f"{got}: out of place (torchvision's order has {want} there); keys swapped?")
    with torch.no_grad():
        for target, value in copy.items():
            own[target].copy_(value)


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """A state_dict from a `.pth` (loaded with `weights_only=True`: no code runs) or a `.safetensors` file, and
    whether its keys keep the order they were saved in (not in safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001: torch raises several kinds for a file that is not a state_dict
        raise ValueError(f"{path}: not a weights-only torch file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return state, True
