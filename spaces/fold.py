"""A trained network of any space as the plain torch network a file holds: what every export
backend converts.

Each conv (slimmable or not) becomes an `nn.Conv2d` at the channels it really uses, with its
sparsity mask applied, its weights on their quantized grid and the batch norm that consumes its
output folded in (per-channel symmetric scales commute with the fold); each linear layer becomes an
`nn.Linear`. Every quantizer the network runs (`Net.plan_precision`) becomes explicit
quantize/dequantize ops with its frozen scale and zero point, where it was. So the plain network
computes what the fake-quantized one computed, in ops that exporters map to the runtime's own
(QuantizeLinear/DequantizeLinear, QUANTIZE/DEQUANTIZE), and module paths stay the same (a layer's
weight keeps its name, "blocks.3.expand.conv.weight").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .precision import FLOAT_BITS
from .quantize import ActivationQuantizer, quantize_weight
from .slim import SlimConv2d, SlimLinear


@dataclass(frozen=True)
class FoldedLayer:
    """One conv or linear layer of the plain network, as a backend needs to find and store it."""

    name: str  # the layer's name in the network (`net.units()`), e.g. "b3.expand"
    path: str  # its module path in the plain network; its weight is "<path>.weight"
    bits: int  # its weights' bits (32: float); its input's quantization is a module of its own


class QuantizedInput(nn.Module):
    """A plain layer that first runs its input quantizer (what a slimmable layer's `act` did)."""

    def __init__(self, quantize: nn.Module, layer: nn.Module):
        super().__init__()
        self.quantize, self.layer = quantize, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.quantize(x))


def layer_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Layer name -> its conv or linear module: from `net.units()` where the network has it (a unit may wrap one
    conv with its batch norm), else every conv and linear module by its module path."""
    units_of = getattr(net, "units", None)
    units = units_of() if callable(units_of) else None
    if units is None:
        return {name: m for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    out: dict[str, nn.Module] = {}
    for name, unit in units.items():
        inner = [m for m in unit.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if len(inner) != 1:
            raise ValueError(f"layer {name!r} holds {len(inner)} conv/linear modules; expected exactly one")
        out[name] = inner[0]
    return out


def trace(model: nn.Module, x: torch.Tensor, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
          ) -> dict[nn.Module, dict]:
    """Run `model` once on `x`, recording each conv, linear and batch-norm module's (or each module of `kinds`')
    input and output tensors."""
    records: dict[nn.Module, dict] = {}
    handles = []

    def before(module, args):
        if module in records:
            raise ValueError(f"{type(module).__name__} module runs more than once in forward; cannot export it")
        records[module] = {"input": args[0]}

    def after(module, args, output):
        records[module]["output"] = output

    for m in model.modules():
        if isinstance(m, kinds):
            handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return records


def layer_outputs(net: nn.Module, x) -> dict:
    """Layer name -> its output in `net` on the images `x` (numpy), after the batch norm that follows it (which a
    file folds into the layer), in network order: what a backend's per-layer comparison holds a file's layers to."""
    net = copy.deepcopy(net).eval()
    for m in net.modules():  # an in-place activation would overwrite the batch-norm output recorded below
        if getattr(m, "inplace", None) is True:
            m.inplace = False  # type: ignore[assignment]  # Module.__setattr__ takes any value
    records = trace(net, torch.from_numpy(x))
    after_bn = {id(r["input"]): r["output"] for m, r in records.items() if isinstance(m, nn.BatchNorm2d)}
    return {name: after_bn.get(id(records[m]["output"]), records[m]["output"]).detach().float().numpy()
            for name, m in layer_modules(net).items()}


def _weight(layer: nn.Conv2d | nn.Linear, cin: int) -> tuple[torch.Tensor, int]:
    """The weights the layer really computes with for a `cin`-channel input (sliced, masked, quantized), and
    its groups."""
    w = layer.weight.detach()
    if isinstance(layer, SlimConv2d):
        w, groups = (w[:cin], cin) if layer.depthwise else (w[: layer.out_active, :cin], 1)
    elif isinstance(layer, SlimLinear):
        w, groups = w[:, :cin], 1
    else:
        groups = getattr(layer, "groups", 1)
    if getattr(layer, "mask", None) is not None:
        w = w * cast(torch.Tensor, layer.mask)
    return quantize_weight(w, getattr(layer, "bits", FLOAT_BITS)), groups


def _plain_conv(conv: nn.Conv2d, cin: int, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    w, groups = _weight(conv, cin)
    bias = conv.bias.detach()[: w.shape[0]] if conv.bias is not None else None
    if bn is not None:  # fold: y = (conv(x) + b - mean) * gamma / sqrt(var + eps) + beta
        c = w.shape[0]
        assert bn.running_var is not None
        scale = 1.0 / torch.sqrt(bn.running_var[:c].double() + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.detach()[:c].double()
        assert bn.running_mean is not None
        shift = (bn.bias.detach()[:c].double() if bn.affine else 0.0) - bn.running_mean[:c].double() * scale
        if bias is not None:
            shift = shift + bias.double() * scale
        w = (w.double() * scale.view(-1, *[1] * (w.dim() - 1))).float()
        bias = shift.float()
    plain = nn.Conv2d(cin, w.shape[0],  # a Conv2d's sizes are pairs; torch types them as _ConvNd's tuple[int, ...]
                      conv.kernel_size, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                      groups, bias=bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        plain.weight.copy_(w)
        if bias is not None:
            assert plain.bias is not None
            plain.bias.copy_(bias)
    return plain


def _plain_linear(linear: nn.Linear, cin: int) -> nn.Linear:
    w, _ = _weight(linear, cin)
    plain = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(w)
        if linear.bias is not None:
            plain.bias.copy_(linear.bias.detach())
    return plain


def _plain_bn(bn: nn.BatchNorm2d, c: int) -> nn.BatchNorm2d:
    plain = nn.BatchNorm2d(c, bn.eps, affine=bn.affine)
    with torch.no_grad():
        assert plain.running_mean is not None and bn.running_mean is not None
        plain.running_mean.copy_(bn.running_mean[:c])
        assert plain.running_var is not None and bn.running_var is not None
        plain.running_var.copy_(bn.running_var[:c])
        if bn.affine:
            plain.weight.copy_(bn.weight.detach()[:c])
            plain.bias.copy_(bn.bias.detach()[:c])
    return plain.eval()


def deployable(net: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, dict[str, FoldedLayer]]:
    """The plain network (a copy: `net` is left untouched), in eval mode on the CPU, and its layers by name.
    Which conv feeds which batch norm is found by running the copy once on a zero input of `input_shape`
    (C, H, W). ValueError names a quantizer whose range was never observed."""
    model = copy.deepcopy(net).cpu().float().eval()
    for path, m in model.named_modules():  # before the trace below, which would observe its zero input
        if isinstance(m, ActivationQuantizer) and m.active and not bool(m.observed):
            raise ValueError(f"quantizer {path!r}: its range was never observed: run the network on data before "
                             "exporting it")
    layers = layer_modules(model)
    names = {m: name for name, m in layers.items()}
    for m in model.modules():
        if getattr(m, "inplace", None) is True:  # same values; in-place ops only slow torch.export down
            m.inplace = False  # type: ignore[assignment]  # Module.__setattr__ takes any value
    records = trace(model, torch.zeros(1, *input_shape))
    producer = {id(r["output"]): m for m, r in records.items() if isinstance(m, nn.Conv2d)}
    folded: dict[nn.Module, nn.BatchNorm2d] = {}
    replace: dict[nn.Module, nn.Module] = {}
    for m, r in records.items():
        if isinstance(m, nn.BatchNorm2d):
            conv = producer.get(id(r["input"]))
            if conv is not None and m.track_running_stats and conv not in folded:
                folded[conv] = m
                replace[m] = nn.Identity()
            else:
                replace[m] = _plain_bn(m, r["input"].shape[1])
    paths = {m: path for path, m in model.named_modules()}
    for m, r in records.items():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        plain: nn.Module = (_plain_conv(m, r["input"].shape[1], folded.get(m)) if isinstance(m, nn.Conv2d)
                            else _plain_linear(m, r["input"].shape[-1]))
        act = getattr(m, "act", None)
        if act is not None and act.active:
            plain = QuantizedInput(act.frozen(), plain)
        replace[m] = plain
    inside_layers = {paths[m] for m in replace if isinstance(m, (nn.Conv2d, nn.Linear))}
    for m in model.modules():  # the quantizers between layers (a layer's own input quantizer went with it)
        if isinstance(m, ActivationQuantizer) and paths[m].rpartition(".")[0] not in inside_layers:
            replace[m] = m.frozen()
    for old, new in replace.items():
        parent, _, child = paths[old].rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    out = {name: FoldedLayer(name, paths[m] + (".layer" if isinstance(replace[m], QuantizedInput) else ""),
                             int(getattr(m, "bits", FLOAT_BITS)))
           for m, name in names.items()}
    return model.eval(), out


