"""Fake quantization with a straight-through estimator, through torch's fused kernels: the
forward pass sees the rounded values a runtime computes with, the backward pass treats rounding
as identity inside the range. `QuantizeDequantize` is the same arithmetic as explicit
quantize/dequantize ops, the form exporters turn into the runtime's own (QuantizeLinear,
QUANTIZE), so a file computes exactly what the fake-quantized network computed."""
from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed
from torch import nn

from .precision import FLOAT_BITS, activation_range, activation_storage_bits

_UNSIGNED = {8: torch.uint8, 16: torch.uint16}


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric, per output channel: the scheme int8 conv kernels (and ONNX QDQ) use."""
    if bits >= FLOAT_BITS:
        return w
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12) / qmax
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)


def activation_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of a `bits`-bit grid over [lo, hi] (which contains 0): 2^bits levels."""
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp_min(1e-12).float()
    zero = torch.round(-lo / scale).clamp(0, levels).to(torch.int32)
    return scale, zero


def quantize_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric, per tensor, unsigned, on the `bits`-bit grid over the observed range [lo, hi];
    saturating where the storage type does (`precision.activation_range`)."""
    scale, zero = activation_params(lo, hi, bits)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, *activation_range(bits))


class ActivationQuantizer(nn.Module):
    """Tracks a tensor's range (moving average while training) and fake-quantizes it."""

    lo: torch.Tensor  # buffers
    hi: torch.Tensor
    observed: torch.Tensor

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.bits = FLOAT_BITS
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    @property
    def active(self) -> bool:
        return self.bits < FLOAT_BITS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
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

    def qparams(self) -> dict:
        """The frozen quantization as plain numbers: bits, scale, zero point, saturation range."""
        scale, zero = activation_params(self.lo.float().cpu(), self.hi.float().cpu(), self.bits)
        lo, hi = activation_range(self.bits)
        return {"bits": self.bits, "scale": float(scale), "zero_point": int(zero), "qmin": lo, "qmax": hi}

    def frozen(self) -> nn.Module:
        """This quantizer with its range fixed, as explicit quantize/dequantize ops (identity at 32 bits)."""
        if not self.active:
            return nn.Identity()
        if not bool(self.observed):
            raise ValueError("a quantizer whose range was never observed cannot be frozen")
        return QuantizeDequantize(**self.qparams())


class QuantizeDequantize(nn.Module):
    """Quantize to an unsigned integer tensor and back, with constant parameters: exactly
    `quantize_activation` for a frozen range, in the ops exporters map to the runtime's."""

    def __init__(self, bits: int, scale: float, zero_point: int, qmin: int, qmax: int):
        super().__init__()
        self.bits, self.scale, self.zero_point, self.qmin, self.qmax = bits, scale, zero_point, qmin, qmax
        self.dtype = _UNSIGNED[activation_storage_bits(bits)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        args = (self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)
        return ops.dequantize_per_tensor(ops.quantize_per_tensor(x, *args), *args)
