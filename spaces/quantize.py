"""Fake quantization with a straight-through estimator, through torch's fused kernels: the
forward pass sees the rounded values a runtime would compute with, the backward pass treats
rounding as identity inside the range."""
from __future__ import annotations

import torch
from torch import nn

FLOAT_BITS = 32


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric, per output channel: the scheme int8 conv kernels (and ONNX QDQ) use."""
    if bits >= FLOAT_BITS:
        return w
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / qmax
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def quantize_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric, per tensor, unsigned, over the observed range [lo, hi] (which contains 0)."""
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp_min(1e-12).float()
    zero = torch.round(-lo / scale).clamp(0, levels).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, levels)


class ActivationQuantizer(nn.Module):
    """Tracks a layer input's range (moving average while training) and fake-quantizes it."""

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.bits = FLOAT_BITS
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= FLOAT_BITS:
            return x
        if self.training or not self.observed:
            lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
            if self.observed:
                lo = torch.lerp(self.lo, lo, self.momentum)
                hi = torch.lerp(self.hi, hi, self.momentum)
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.observed.fill_(True)
        return quantize_activation(x, self.lo, self.hi, self.bits)
