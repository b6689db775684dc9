"""MobileNetV2-style space for small inputs: inverted residual blocks of 1x1 expansion,
depthwise KxK and 1x1 projection convs.

Searchable: a width multiplier for the stem, each stage and the head (not the head with torchvision's
rounding, which keeps it at full width as torchvision does); where `depths` offers it, how many of its
first blocks each stage keeps (once-for-all's elastic depth: a block keeps its name, so its weights are
the same at every depth); where `resolutions` offers it, the input resolution; a bit-width for every
conv and linear layer (weights and input activations); a sparsity for every layer that can
lose it. With granularity "channel" that is the hidden (expanded) channels of each block,
removed by filter norm so the network physically shrinks; with "weight" it is every layer,
by weight magnitude, and shapes stay dense.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence, cast

import torch

from .candidate import Candidate, Layer
from .inverted_residual import Arch, Block, ConvBN, InvertedResidual, Net
from .precision import BITS
from .prune import magnitude_mask, strongest_filters
from .slim import SlimConv2d, SlimLinear

GRANULARITIES = ("channel", "weight")
ROUNDINGS = ("nearest-4", "torchvision")


def _channels(c: float, rounding: str = "nearest-4") -> int:
    """Round a channel count: "nearest-4", to the nearest multiple of 4 (vector-friendly on phone CPUs), at least 4;
    "torchvision", as torchvision's `_make_divisible(c, 8)`: the nearest multiple of 8, at least 8, and never
    more than 10% below `c`."""
    if rounding == "nearest-4":
        return max(4, int(c / 4 + 0.5) * 4)
    rounded = max(8, int(c + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * c else rounded


def _whole(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _numbers(name: str, values: Any) -> list:
    if not isinstance(values, (list, tuple)) or not values \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        raise ValueError(f"{name}: must be a non-empty list of finite numbers, got {values!r}")
    return list(values)


def _check(stem: Any, stages: Any, head: Any, kernel: Any, widths: Any, bits: Any, sparsity: Any,
           granularity: Any, rounding: Any, depths: Any, resolutions: Any, input_shape: Sequence[int]) -> None:
    """Every setting, each error starting with the setting's name."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: must be one of {list(ROUNDINGS)}, got {rounding!r}")
    if not isinstance(stem, dict) or set(stem) != {"channels", "stride"} or not all(map(_whole, stem.values())):
        raise ValueError(f"stem: must be {{channels: N, stride: N}} with whole numbers >= 1, got {stem!r}")
    if not isinstance(stages, (list, tuple)) or not stages or any(
            not isinstance(s, (list, tuple)) or len(s) != 4 or not all(map(_whole, s)) for s in stages):
        raise ValueError(f"stages: must be a non-empty list of [expand ratio, channels, blocks, stride], "
                         f"whole numbers >= 1, got {stages!r}")
    if not _whole(head):
        raise ValueError(f"head: must be a whole number >= 1, got {head!r}")
    if not _whole(kernel) or kernel % 2 == 0:
        raise ValueError(f"kernel: must be an odd whole number, got {kernel!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: must be one of {list(GRANULARITIES)}, got {granularity!r}")
    widths = _numbers("widths", widths)
    if max(widths) != 1.0 or min(widths) <= 0:
        raise ValueError(f"widths: must be in (0, 1] and include 1.0, got {widths}")
    if not isinstance(bits, (list, tuple)) or not bits or not all(map(_whole, bits)):
        raise ValueError(f"bits: must be a non-empty list of whole numbers, got {bits!r}")
    if 32 not in bits or any(b not in BITS for b in bits):
        raise ValueError(f"bits: must be among 2..8, 16, 32 and include 32, got {bits}")
    sparsity = _numbers("sparsity", sparsity)
    if 0.0 not in sparsity or any(not 0.0 <= s < 1.0 for s in sparsity):
        raise ValueError(f"sparsity: must be in [0, 1) and include 0.0, got {sparsity}")
    if not isinstance(depths, (list, tuple)) or not all(map(_whole, depths)):
        raise ValueError(f"depths: must be a list of whole numbers >= 1 (blocks a stage may keep), got {depths!r}")
    if not isinstance(resolutions, (list, tuple)) or not all(map(_whole, resolutions)):
        raise ValueError(f"resolutions: must be a list of whole numbers >= 1 (input heights in pixels), "
                         f"got {resolutions!r}")
    if any(r > input_shape[1] for r in resolutions):
        raise ValueError(f"resolutions: {max(resolutions)} is above the data's {input_shape[1]} px (only smaller "
                         f"inputs are searched)")


class MobileNetV2Space:
    name = "mobilenetv2"
    encoding = "arch"  # the measurement-file column that holds a network's encoding

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, stem: dict, stages: Sequence[Sequence[int]],
                 head: int, kernel: int, widths: Sequence[float], bits: Sequence[int], sparsity: Sequence[float],
                 granularity: str, rounding: str = "nearest-4", depths: Sequence[int] = (),
                 resolutions: Sequence[int] = (), **_: Any):
        _check(stem, stages, head, kernel, widths, bits, sparsity, granularity, rounding, depths, resolutions,
               input_shape)
        self.rounding = rounding
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.stem_channels, self.stem_stride = stem["channels"], stem["stride"]
        self.stages = [tuple(s) for s in stages]
        self.head_channels, self.kernel = head, kernel
        self.widths, self.bits, self.sparsities = list(widths), list(bits), list(sparsity)
        self.granularity = granularity
        self.width_names = ["width.stem", *(f"width.s{i}" for i in range(len(self.stages)))]
        if rounding != "torchvision":  # torchvision keeps the head at its full channels below width 1.0
            self.width_names.append("width.head")
        # elastic depth and resolution: a parameter only where there is a choice (a study without them is unchanged)
        stage_depths = {f"depth.s{i}": sorted({d for d in depths if d < s[2]} | {s[2]}) for i, s in enumerate(self.stages)}
        self.depths = {name: choices for name, choices in stage_depths.items() if len(choices) > 1}
        self.resolutions = sorted(set(resolutions) | {self.input_shape[1]})
        self.elastic = {n: self.widths for n in self.width_names} | self.depths \
            | ({"resolution": self.resolutions} if len(self.resolutions) > 1 else {})
        self.layer_names = list(self._units(self.arch(self.extremes()[1])))
        self.prunable = [n for n in self.layer_names
                         if self.granularity == "weight" or n.endswith(".expand")]

    # --- candidates ---------------------------------------------------------------------------
    def sample(self, trial: Any) -> Candidate:
        """Works with any Optuna BaseTrial, so FixedTrial(params) rebuilds a stored candidate."""
        params: dict[str, Any] = {}
        for name, choices in self.elastic.items():
            params[name] = trial.suggest_categorical(name, choices)
        for name in self.layer_names:  # every layer of the full depth: a dropped block's bits are kept, unused
            params[f"bits.{name}"] = trial.suggest_categorical(f"bits.{name}", self.bits)
        for name in self.prunable:
            params[f"sparsity.{name}"] = trial.suggest_categorical(f"sparsity.{name}", self.sparsities)
        return Candidate.of(self.name, params)

    def encode(self, candidate: Candidate) -> str:
        """One line: `name=value` pairs, space-separated (a measurement file's `arch` cell)."""
        return " ".join(f"{k}={v}" for k, v in candidate.params)

    def decode(self, text: str) -> Candidate:
        """Parse `encode`'s output; ValueError names the parameter that is wrong."""
        choices = (self.elastic | {f"bits.{n}": self.bits for n in self.layer_names}
                   | {f"sparsity.{n}": self.sparsities for n in self.prunable})
        params: dict[str, Any] = {}
        for item in text.split():
            name, _, value = item.partition("=")
            if name not in choices:
                raise ValueError(f"unknown parameter {name!r}")
            number = float(value) if value.replace(".", "", 1).isdigit() else None
            if number not in choices[name]:
                raise ValueError(f"{name}: {value!r} is not one of {choices[name]}")
            assert number is not None
            params[name] = type(choices[name][0])(number)
        missing = sorted(set(choices) - set(params))
        if missing:
            raise ValueError(f"missing parameters: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        return Candidate.of(self.name, params)

    def baselines(self) -> dict[str, dict[str, Any]]:
        """The float full-width network and, where 8 bits is a choice, the uniform 8-bit one (full depth, full
        resolution)."""
        largest = self.extremes()[1]
        return {"float": self._uniform(largest, 32, 0.0)} | (
            {"int8": self._uniform(largest, 8, 0.0)} if 8 in self.bits else {})

    def cheapest(self, bits: int) -> Candidate:
        """The smallest network (least width, depth and resolution) at its highest sparsity, every layer at `bits`."""
        return Candidate.of(self.name, self._uniform(self.extremes()[0], bits, max(self.sparsities)))

    def _uniform(self, active: Candidate, bits: int, sparsity: float) -> dict[str, Any]:
        """The params of `active`'s elastic choices with every layer at `bits` and every prunable one at `sparsity`."""
        return (active.as_dict() | {f"bits.{n}": bits for n in self.layer_names}
                | {f"sparsity.{n}": sparsity for n in self.prunable})

    def arch(self, candidate: Candidate) -> Arch:
        p = candidate.as_dict()
        stem = _channels(self.stem_channels * p["width.stem"], self.rounding)
        blocks, cin, widest_in, index = [], stem, self.stem_channels, 0
        for s, (expand, channels, repeats, stride) in enumerate(self.stages):
            cout = _channels(channels * p[f"width.s{s}"], self.rounding)
            for r in range(p.get(f"depth.s{s}", repeats)):  # the first blocks of the stage
                residual = (stride == 1 or r > 0) and widest_in == channels
                widest_in = channels
                name = f"b{index + r}"
                hidden = cin * expand
                if expand != 1 and self.granularity == "channel":
                    hidden = min(hidden, _channels(hidden * (1 - p.get(f"sparsity.{name}.expand", 0.0)), self.rounding))
                blocks.append(Block(name, cin, hidden, cout, stride if r == 0 else 1, expand, residual))
                cin = cout
            index += repeats
        head = self.head_channels * p.get("width.head", 1.0)
        return Arch(stem, tuple(blocks), _channels(head, self.rounding))

    def input_shape_of(self, candidate: Candidate) -> tuple[int, int, int]:
        """(C, H, W) of the candidate's input: the data's, or scaled to the candidate's resolution (its height)."""
        c, h, w = self.input_shape
        r = candidate.as_dict().get("resolution", h)
        return (c, h, w) if r == h else (c, r, max(1, round(w * r / h)))

    # --- layers ---------------------------------------------------------------------------------
    def _units(self, arch: Arch) -> dict[str, tuple[int, int, int, int, int]]:
        """name -> (cin, cout, kernel, stride, groups) for every conv and linear layer, in order."""
        k = self.kernel
        units = {"stem": (self.input_shape[0], arch.stem, k, self.stem_stride, 1)}
        for b in arch.blocks:
            if b.expand:
                units[f"{b.name}.expand"] = (b.cin, b.hidden, 1, 1, 1)
            units[f"{b.name}.dw"] = (b.hidden, b.hidden, k, b.stride, b.hidden)
            units[f"{b.name}.project"] = (b.hidden, b.cout, 1, 1, 1)
        units["head"] = (arch.blocks[-1].cout, arch.head, 1, 1, 1)
        units["classifier"] = (arch.head, self.num_classes, 1, 1, 1)
        return units

    def layers(self, candidate: Candidate) -> list[Layer]:
        """Every conv and linear layer of the candidate as the predictor's plain descriptor."""
        p = candidate.as_dict()
        arch = self.arch(candidate)
        blocks = {b.name: b for b in arch.blocks}
        _, h, w = self.input_shape_of(candidate)
        out = []
        for name, (cin, cout, k, stride, groups) in self._units(arch).items():
            kind = "linear" if name == "classifier" else "conv"
            if kind == "linear":
                h = w = 1
            oh, ow = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
            sparsity = p.get(f"sparsity.{name}", 0.0)
            if self.granularity == "channel" and name.endswith(".expand"):
                block = blocks[name.split(".")[0]]
                sparsity = 1 - block.hidden / (block.cin * block.ratio)  # what rounding actually removed
            out.append(Layer(name, kind, (cin, h, w), (cout, oh, ow), k, stride, groups, p[f"bits.{name}"],
                             float(sparsity), self.granularity))
            h, w = oh, ow
        return out

    # --- networks -------------------------------------------------------------------------------
    def _net(self, arch: Arch) -> Net:
        return Net(arch, self.input_shape[0], self.num_classes, self.kernel, self.stem_stride)

    def build(self, candidate: Candidate) -> Net:
        """The candidate with fresh weights (for latency measurement)."""
        return self.subnet(self.supernet(), candidate)

    def supernet(self) -> Net:
        """The largest network: every sub-network shares (slices) its weights."""
        return self._net(self.arch(Candidate.of(self.name, self.baselines()["float"])))

    def set_active(self, supernet: Net, candidate: Candidate) -> None:
        """Make the supernet run as a candidate's network, at its widths and depths (used while training it; the
        candidate's resolution is its input's, `input_shape_of`)."""
        units = supernet.units()
        arch = self.arch(candidate)
        for name, (_, cout, *_) in self._units(arch).items():
            if name != "classifier":
                cast(ConvBN, units[name]).conv.out_active = cout
        kept = {b.name for b in arch.blocks}
        for block in cast(Iterable[InvertedResidual], supernet.blocks):
            block.active = block.name in kept

    def sample_active(self, generator: torch.Generator) -> Candidate:
        """A random choice of every elastic dimension (widths, then depths and resolution where they are choices)."""
        # the widths in one draw, as before depths and resolutions existed: a space without them trains as it did
        pick = torch.randint(len(self.widths), (len(self.width_names),), generator=generator)
        values = [self.widths[i] for i in pick.tolist()]
        for choices in list(self.elastic.values())[len(self.width_names):]:
            values.append(choices[int(torch.randint(len(choices), (1,), generator=generator))])
        return self._active(values)

    def extremes(self) -> tuple[Candidate, Candidate]:
        """The smallest and the largest networks: the two ends of the sandwich rule."""
        return (self._active([min(c) for c in self.elastic.values()]),
                self._active([max(c) for c in self.elastic.values()]))

    def _active(self, values: list) -> Candidate:
        return Candidate.of(self.name, dict(zip(self.elastic, values)))

    def subnet(self, supernet: Net, candidate: Candidate) -> Net:
        """A physically sized copy of the candidate: weights sliced from the supernet, hidden
        channels kept by filter norm (granularity "channel"), magnitude masks (granularity
        "weight"), and each layer's bit-width set. Gradients never reach the supernet."""
        p = candidate.as_dict()
        arch = self.arch(candidate)
        blocks = {b.name: b for b in arch.blocks}
        net = self._net(arch)
        source, target = supernet.units(), net.units()
        keep = torch.arange(self.input_shape[0])
        with torch.no_grad():
            for name, (cin, cout, *_) in self._units(arch).items():
                src, dst = source[name], target[name]
                if name == "classifier":
                    src, dst = cast(SlimLinear, src), cast(SlimLinear, dst)
                    dst.weight.copy_(src.weight[:, keep])
                    dst.bias.copy_(src.bias)
                    layer: SlimConv2d | SlimLinear = dst
                else:
                    src, dst = cast(ConvBN, src), cast(ConvBN, dst)
                    w = src.conv.weight
                    if name.endswith(".dw"):
                        out = keep
                        dst.conv.weight.copy_(w[out])
                    elif name.endswith(".expand"):
                        active = blocks[name.split(".")[0]].ratio * len(keep)  # the slimmed width
                        out = strongest_filters(w[:active, keep], cout)
                        dst.conv.weight.copy_(w[out][:, keep])
                    else:
                        out = torch.arange(cout)
                        dst.conv.weight.copy_(w[out][:, keep])
                    for attr in ("weight", "bias", "running_mean", "running_var"):
                        getattr(dst.bn, attr).copy_(getattr(src.bn, attr)[out])
                    keep, layer = out, dst.conv
                layer.set_bits(p[f"bits.{name}"])
                if self.granularity == "weight":
                    layer.mask = magnitude_mask(layer.weight, p.get(f"sparsity.{name}", 0.0))
        net.plan_precision()
        return net
