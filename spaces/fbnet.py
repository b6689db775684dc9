"""The FBNet search space in its CIFAR-100 setting (input 3x32x32, 100 classes), exactly as the
public phone measurements in `data/device-latency/` describe it, so that those measurements can
calibrate a latency predictor. Each of 22 blocks picks one of nine ops; all layers are float.

This space has no weight-sharing supernet: it describes, builds and encodes networks (for
latency calibration and measurement), but is not searched for accuracy.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .candidate import Candidate, Layer

OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
BLOCKS = (1, 4, 4, 4, 4, 4, 1)
CHANNELS = (16, 24, 32, 64, 112, 184, 352)
STRIDES = (1, 1, 2, 2, 1, 2, 1)
STEM, HEAD = 16, 1504


def parse_op(op: str) -> tuple[int, int, int]:
    """'k5_e6' -> (kernel 5, expansion 6, groups 1); 'k3_e1_g2' -> (3, 1, 2)."""
    parts = op.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:]) if len(parts) > 2 else 1


def _plan() -> list[tuple[int, int, int]]:
    """(C_in, C_out, stride) of each of the 22 blocks."""
    plan, cin = [], STEM
    for n, cout, stride in zip(BLOCKS, CHANNELS, STRIDES):
        for i in range(n):
            plan.append((cin, cout, stride if i == 0 else 1))
            cin = cout
    return plan


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class FBNetBlock(nn.Module):
    def __init__(self, op: str, cin: int, cout: int, stride: int):
        super().__init__()
        self.residual = cin == cout and stride == 1
        if op == "skip":
            self.body = nn.Identity() if self.residual else _conv_bn(cin, cout, 1, stride)
            self.residual = False  # the identity itself is the block
            return
        k, e, g = parse_op(op)
        hidden = cin * e
        self.body = nn.Sequential(_conv_bn(cin, hidden, 1, groups=g), *([ChannelShuffle(g)] if g > 1 else []),
                                  _conv_bn(hidden, hidden, k, stride, groups=hidden),
                                  _conv_bn(hidden, cout, 1, groups=g, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)

    def units(self, name: str) -> dict[str, nn.Module]:
        """This block's conv layers under their descriptor names."""
        convs = [m for m in self.body.modules() if isinstance(m, nn.Conv2d)]
        parts = ["skip"] if len(convs) == 1 else ["expand", "dw", "project"]
        return {f"{name}.{part}": conv for part, conv in zip(parts, convs)}


class FBNet(nn.Sequential):
    def units(self) -> dict[str, nn.Module]:
        """Every conv and linear layer under the name its descriptor has (for export)."""
        blocks = [m for m in self if isinstance(m, FBNetBlock)]
        out = {"stem": self[0]}
        for i, block in enumerate(blocks):
            out |= block.units(f"b{i}")
        return out | {"head": self[-4], "classifier": self[-1]}


class FBNetSpace:
    name = "fbnet"
    encoding = "ops"  # the measurement-file column that holds a network's encoding

    def __init__(self, *, input_shape=(3, 32, 32), num_classes: int = 100, ops=OPS, **_: Any):
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"ops: unknown {unknown}; allowed: {list(OPS)}")
        self.input_shape, self.num_classes, self.ops = tuple(input_shape), num_classes, list(ops)
        self.block_names = [f"b{i}" for i in range(sum(BLOCKS))]

    def sample(self, trial: Any) -> Candidate:
        return Candidate.of(self.name, {f"op.{b}": trial.suggest_categorical(f"op.{b}", self.ops)
                                        for b in self.block_names})

    def ops_of(self, candidate: Candidate) -> list[str]:
        return [candidate[f"op.{b}"] for b in self.block_names]

    def encode(self, candidate: Candidate) -> str:
        return " ".join(self.ops_of(candidate))

    def decode(self, text: str) -> Candidate:
        """Parse the measurement file's `ops` cell; ValueError says which block is wrong."""
        ops = text.split()
        if len(ops) != len(self.block_names):
            raise ValueError(f"expected {len(self.block_names)} blocks, got {len(ops)}")
        for i, op in enumerate(ops):
            if op not in OPS:
                raise ValueError(f"block {i}: unknown op {op!r}; allowed: {', '.join(OPS)}")
        return Candidate.of(self.name, {f"op.{b}": op for b, op in zip(self.block_names, ops)})

    def input_shape_of(self, candidate: Candidate) -> tuple[int, int, int]:
        return self.input_shape  # one resolution

    def layers(self, candidate: Candidate) -> list[Layer]:
        """Every conv and linear layer, float, in order."""
        _, h, w = self.input_shape
        out: list[Layer] = []

        def conv(name: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
            nonlocal h, w
            oh, ow = (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1
            out.append(Layer(name, "conv", (cin, h, w), (cout, oh, ow), k, stride, groups))
            h, w = oh, ow

        conv("stem", self.input_shape[0], STEM, 3)
        for b, op, (cin, cout, stride) in zip(self.block_names, self.ops_of(candidate), _plan()):
            if op == "skip":
                if not (cin == cout and stride == 1):
                    conv(f"{b}.skip", cin, cout, 1, stride)
                continue
            k, e, g = parse_op(op)
            conv(f"{b}.expand", cin, cin * e, 1, 1, g)
            conv(f"{b}.dw", cin * e, cin * e, k, stride, cin * e)
            conv(f"{b}.project", cin * e, cout, 1, 1, g)
        conv("head", CHANNELS[-1], HEAD, 1)
        out.append(Layer("classifier", "linear", (HEAD, 1, 1), (self.num_classes, 1, 1)))
        return out

    def build(self, candidate: Candidate) -> nn.Module:
        """The network with fresh weights: enough to measure its latency."""
        blocks = [FBNetBlock(op, cin, cout, s) for op, (cin, cout, s) in zip(self.ops_of(candidate), _plan())]
        return FBNet(_conv_bn(self.input_shape[0], STEM, 3), *blocks, _conv_bn(CHANNELS[-1], HEAD, 1),
                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(HEAD, self.num_classes))
