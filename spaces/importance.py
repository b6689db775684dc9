"""A trained network's channels reordered by importance, so that a narrower width, which keeps the first channels
of each layer, keeps the ones that matter most (once-for-all's channel sorting). Applied to the full-width network
of a supernet started from trained weights (`supernet.init`): a trained network's channel order is arbitrary, and
slicing it would cut at random. The network computes the same function afterwards: every tensor's channels are
permuted once, and every layer that writes, passes through or reads them follows.

A channel's importance is the L1 norm of the weights that read it (once-for-all's rule for its expanded channels),
summed over every layer reading the tensor: a residual stage's tensor is read by each of its blocks.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .inverted_residual import ConvBN, InvertedResidual, Net


@dataclass
class _Tensor:
    """One tensor's channels: the units writing them (conv + batch norm), the depthwise units passing them through
    channel by channel, and the conv or linear layers reading them."""

    writers: list[ConvBN]
    passes: list[ConvBN] = field(default_factory=list)
    readers: list[nn.Conv2d | nn.Linear] = field(default_factory=list)


def _tensors(net: Net) -> list[_Tensor]:
    """The channel groups of a MobileNetV2-style network (`stem`, `blocks` with `expand`, `dw`, `project` and
    `residual`, `head`, `classifier`), at full width."""
    current = _Tensor([net.stem])
    out = [current]
    for block in cast("Iterable[InvertedResidual]", net.blocks):
        if block.expand is not None:
            current.readers.append(block.expand.conv)
            out.append(_Tensor([block.expand], [block.dw], [block.project.conv]))
        else:  # the depthwise conv reads the block's input channel by channel
            current.passes.append(block.dw)
            current.readers.append(block.project.conv)
        if block.residual:  # its output is added to its input: the same channels
            current.writers.append(block.project)
        else:
            current = _Tensor([block.project])
            out.append(current)
    current.readers.append(net.head.conv)
    out.append(_Tensor([net.head], readers=[net.classifier]))
    return out


def _permute_channels(unit: ConvBN, order: torch.Tensor) -> None:
    """A conv unit's output channels (and its batch norm's), or a depthwise unit's only channel axis."""
    unit.conv.weight.copy_(unit.conv.weight[order])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(unit.bn, name).copy_(getattr(unit.bn, name)[order])


@torch.no_grad()
def sort_channels(net: nn.Module) -> None:
    """Reorder every channel group of `net` (in place) by importance, most important first."""
    for tensor in _tensors(cast("Net", net)):
        importance = sum(reader.weight.abs().transpose(0, 1).flatten(1).sum(1) for reader in tensor.readers)
        order = torch.argsort(cast(torch.Tensor, importance), descending=True, stable=True)  # every tensor is read
        for unit in tensor.writers + tensor.passes:
            _permute_channels(unit, order)
        for reader in tensor.readers:
            reader.weight.copy_(reader.weight[:, order])
