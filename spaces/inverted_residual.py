"""The network of a MobileNetV2-style space: inverted residual blocks (1x1 expansion, depthwise KxK, 1x1
projection) of slimmable layers, built from an `Arch` (concrete channel counts), and where it quantizes its
tensors (`Net.plan_precision`). `spaces.mobilenetv2` decides which network a candidate is; this module is that
network in torch."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .precision import FLOAT_BITS, integer_kernel
from .quantize import ActivationQuantizer
from .slim import SlimBatchNorm2d, SlimConv2d, SlimLinear


@dataclass(frozen=True)
class Block:
    name: str
    cin: int
    hidden: int
    cout: int
    stride: int
    ratio: int  # expansion ratio of the stage; 1 means no expansion conv
    residual: bool  # the full-width network has a skip connection here

    @property
    def expand(self) -> bool:
        return self.ratio != 1


@dataclass(frozen=True)
class Arch:
    """Concrete channel counts of one network of the space."""

    stem: int
    blocks: tuple[Block, ...]
    head: int


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False, relu: bool = True):
        super().__init__()
        self.conv = SlimConv2d(cin, cout, kernel, stride, depthwise)
        self.bn = SlimBatchNorm2d(cout)
        self.relu = nn.ReLU6(inplace=True) if relu else nn.Identity()
        self.out = ActivationQuantizer()  # on where the conv is an integer kernel (see `Net.plan_precision`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.bn(self.conv(x))))


class InvertedResidual(nn.Module):
    def __init__(self, b: Block, kernel: int):
        super().__init__()
        self.name = b.name  # the block's place in the full network: the same at every depth
        self.active = True  # a supernet skips the blocks a candidate's depth drops (`set_active`)
        self.expand = ConvBN(b.cin, b.hidden, 1) if b.expand else None
        self.dw = ConvBN(b.hidden, b.hidden, kernel, b.stride, depthwise=True)
        self.project = ConvBN(b.hidden, b.cout, 1, relu=False)
        self.residual = b.residual
        self.sum = ActivationQuantizer()  # the residual add's output, on where the add runs on integers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x) if self.expand else x))
        return self.sum(x + y) if self.adds(x.shape[1], y.shape[1]) else y

    def adds(self, cin: int, cout: int) -> bool:
        """A skip of the full network is dropped where independent widths make the shapes differ."""
        return self.residual and cin == cout


class Net(nn.Module):
    def __init__(self, arch: Arch, in_channels: int, num_classes: int, kernel: int, stem_stride: int):
        super().__init__()
        self.stem = ConvBN(in_channels, arch.stem, kernel, stem_stride)
        self.blocks = nn.ModuleList(InvertedResidual(b, kernel) for b in arch.blocks)
        self.head = ConvBN(arch.blocks[-1].cout, arch.head, 1)
        self.classifier = SlimLinear(arch.head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            if block.active:
                x = block(x)
        return self.classifier(self.head(x).mean((2, 3)))

    def units(self) -> dict[str, ConvBN | SlimLinear]:
        """Every conv (with its batch norm) and the classifier, by layer name, in order."""
        out: dict[str, ConvBN | SlimLinear] = {"stem": self.stem}
        for block in self.blocks:
            for part in ("expand", "dw", "project"):
                if getattr(block, part) is not None:
                    out[f"{block.name}.{part}"] = getattr(block, part)
        return out | {"head": self.head, "classifier": self.classifier}

    def plan_precision(self) -> None:
        """Where values are quantized, from every layer's bits (`set_bits`): each tensor once, on the grid
        of the layer that reads it. A float layer's output is quantized by its reader's own input quantizer;
        an integer kernel (5-8 bits) writes its output already on its reader's grid (8 bits where the reader
        is float or an op), as a runtime's integer kernel does; a residual add of two tensors stored in
        8 bits or fewer runs on integers and writes its output the same way. The exported file quantizes
        exactly here, and nowhere twice in a row (onnxruntime merges such pairs into one rounding)."""
        for unit in self.units().values():
            layer = unit if isinstance(unit, SlimLinear) else unit.conv
            layer.act.bits = layer.bits

        def feed(quantizer: ActivationQuantizer, integer: bool, reader: SlimConv2d | None) -> bool:
            """Quantize a tensor for its reader (a layer, or None for an op); True if it is then stored in
            8 bits or fewer for every reader, so an integer op can read it."""
            bits = reader.bits if reader is not None else FLOAT_BITS
            quantizer.bits = (bits if bits < FLOAT_BITS else 8) if integer else FLOAT_BITS
            if integer and reader is not None:
                reader.act.bits = FLOAT_BITS  # its input arrives on its grid
            return quantizer.active and quantizer.bits <= 8

        def integer(unit: ConvBN) -> bool:
            return integer_kernel(unit.conv.bits)

        current = (self.stem.out, integer(self.stem))
        for block in cast(Iterable[InvertedResidual], self.blocks):
            first = block.expand or block.dw
            on_grid = feed(*current, first.conv)
            if block.expand:
                feed(block.expand.out, integer(block.expand), block.dw.conv)
            feed(block.dw.out, integer(block.dw), block.project.conv)
            if block.adds(first.conv.in_channels, block.project.conv.out_active):
                added = feed(block.project.out, integer(block.project), None) and on_grid
                current = (block.sum, added)
            else:
                block.sum.bits = FLOAT_BITS
                current = (block.project.out, integer(block.project))
        feed(*current, self.head.conv)
        feed(self.head.out, integer(self.head), None)  # the classifier quantizes the pooled values itself
