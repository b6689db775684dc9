"""Slimmable layers: one set of weights at the largest shape, run at any narrower width by
slicing (as in once-for-all), each with its own bit-width and fixed sparsity mask.

A layer takes as many input channels as it is given and produces `out_active` outputs, so a
supernet is run at a candidate's widths by setting `out_active`, and a physically smaller
network is the same classes built at the candidate's exact sizes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .precision import FLOAT_BITS
from .quantize import ActivationQuantizer, quantize_weight


class _Quantized:
    """What a quantized, prunable layer adds to torch's own: bits, an input quantizer, a mask."""

    mask: torch.Tensor | None  # a buffer
    if TYPE_CHECKING:  # from the nn.Module it is mixed into
        def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None: ...

    def _setup(self) -> None:
        self.bits = FLOAT_BITS
        self.act = ActivationQuantizer()
        self.register_buffer("mask", None)

    def set_bits(self, bits: int) -> None:
        self.bits = self.act.bits = bits

    def _effective_weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            w = w * self.mask
        return quantize_weight(w, self.bits)


class SlimConv2d(nn.Conv2d, _Quantized):
    """A dense (groups=1) or depthwise convolution, without bias (batch norm follows)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False):
        super().__init__(cin, cout, kernel, stride, kernel // 2, groups=cin if depthwise else 1, bias=False)
        self.depthwise = depthwise
        self.out_active = cout
        self._setup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        w = self.weight[:cin] if self.depthwise else self.weight[: self.out_active, :cin]
        return F.conv2d(self.act(x), self._effective_weight(w), None, self.stride, self.padding,
                        groups=cin if self.depthwise else 1)


class SlimLinear(nn.Linear, _Quantized):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout)
        self._setup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        return F.linear(self.act(x), self._effective_weight(self.weight[:, :cin]), self.bias)


class SlimBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first C channels of its statistics and affine parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum or 0.0, self.eps)
