"""`python -m search.predict target=T model=FILE.onnx|FILE.tflite|BUILDER`: what a target's latency predictor says
about any network (a promoted file, a user's export, a published family at a width and resolution), layer by
layer, and whether it is inside the networks the predictor was calibrated on (after nn-Meter's `predict`)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from spaces.precision import check as check_bits

from . import describe, latency
from .cli import command
from .config import ConfigError, check_flag, check_number, validate_target, value_at
from .errors import UserError

CONFIG_NAME = "predict"


@dataclasses.dataclass(frozen=True)
class Request:
    """What prediction reads of its config, built once by `of` after every value is checked."""

    model: str  # an .onnx or .tflite file, or a builder's name
    width: float  # builders: the width multiplier
    resolution: int  # builders: the input's height and width
    bits: int  # builders: every layer's precision
    layers: bool  # print the per-layer breakdown
    target: Mapping[str, Any]

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> Request:
        model = value_at(cfg, "model")
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model: {describe.SUPPORTED}, got {model!r}")
        check_number(cfg, "width")
        check_number(cfg, "resolution")
        try:
            check_bits(value_at(cfg, "bits"))
        except ValueError as e:
            raise ConfigError(f"bits: {e}") from None
        check_flag(cfg, "layers")
        validate_target(cfg["target"], [])
        return cls(model, float(cfg["width"]), int(cfg["resolution"]), int(cfg["bits"]), cfg["layers"], cfg["target"])

    @property
    def is_file(self) -> bool:
        return self.model.endswith((".onnx", ".tflite"))


def predict(r: Request) -> dict[str, Any]:
    """The prediction as plain data: the network's layers, their milliseconds, the total, and the domain check."""
    try:
        layers = describe.describe(r.model, r.width, r.resolution)
    except describe.DescribeError as e:
        raise UserError(str(e)) from None
    if not r.is_file and r.bits != 32:
        layers = [dataclasses.replace(layer, bits=r.bits) for layer in layers]
    predictor = latency.for_target(r.target)
    unknown = sorted({layer.bits for layer in layers} - set(predictor.kernels))
    if unknown:
        raise UserError(f"model: {'/'.join(map(str, unknown))}-bit layers; target {predictor.target} runs "
                        f"{'/'.join(map(str, sorted(predictor.kernels)))}")
    return {"target": predictor.target, "model": r.model, "latency_ms": predictor.predict(layers),
            "macs": sum(layer.macs for layer in layers), "layers": layers,
            "breakdown": predictor.breakdown(layers), "extrapolated": predictor.extrapolated(layers),
            "source": predictor.describe()["latency.source"]}


def _run(cfg: dict[str, Any], checked: Request | None) -> None:
    r = checked or Request.of(cfg)
    p = predict(r)
    shown = r.model if r.is_file else f"{r.model} width {r.width:g} at {r.resolution} px, {r.bits}-bit"
    print(f"{shown}: {len(p['layers'])} layers, {p['macs'] / 1e6:.1f} MMACs")
    if r.layers:
        print(f"{'layer':<40} {'shape in -> out':<28} {'k/s/g':>8} {'MMACs':>8} {'runs as':>8} {'ms':>8}")
        n = len(p["layers"])  # the breakdown lists the layers in order (names may repeat in a file), then the rest
        for layer, (name, run, ms) in zip(p["layers"], p["breakdown"][:n]):
            shape = f"{'x'.join(map(str, layer.in_shape))} -> {'x'.join(map(str, layer.out_shape))}"
            print(f"{name[-40:]:<40} {shape:<28} {f'{layer.kernel}/{layer.stride}/{layer.groups}':>8} "
                  f"{layer.macs / 1e6:>8.2f} {run:>8} {ms:>8.3f}")
        for name, _, ms in p["breakdown"][n:]:
            print(f"{name:<40} {'':<28} {'':>8} {'':>8} {'':>8} {ms:>8.3f}")
    print(f"predicted latency on {p['target']}: {p['latency_ms']:.2f} ms ({p['source']})")
    if p["extrapolated"]:
        print("outside the calibrated domain, so extrapolated: " + "; ".join(p["extrapolated"]))
    else:
        print("inside the calibrated domain")
    print(json.dumps({k: p[k] for k in ("target", "model", "latency_ms", "macs", "extrapolated")}))


def main() -> None:
    command(CONFIG_NAME, Request.of, _run)


if __name__ == "__main__":
    main()
