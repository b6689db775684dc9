"""Where a latency predictor knows what it is talking about: the range of networks it was calibrated on, as
concrete bounds, and which bounds a network falls outside.

A linear cost model fitted on one family of networks interpolates within it and extrapolates outside: a network
ten times smaller than any it saw, a precision never measured, a resolution never run. Those predictions may
still rank networks, but they are guesses, and a user choosing from a front should know which ones are. The
bounds are plain numbers saved in the predictor file; a trial or a `predict` call outside them is tagged
`latency.extrapolated` with the reasons.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from spaces import Layer

EXTRAPOLATED = "latency_extrapolated"  # a trial's user attr: why its predicted latency is an extrapolation ("" inside)


@dataclass(frozen=True)
class Domain:
    """Inclusive bounds over every network a predictor was fitted on."""

    networks: int  # how many networks the bounds come from
    network_macs: tuple[float, float]  # a whole network's multiply-accumulates
    layer_macs: tuple[float, float]  # one layer's
    channels: tuple[int, int]  # a conv layer's output channels (a classifier's are its classes: not a cost)
    spatial: tuple[int, int]  # a layer's output height (and width)
    resolution: tuple[int, int]  # the network's input height
    bits: tuple[int, ...]  # the precisions its layers ran at

    @classmethod
    def of(cls, networks: Sequence[Sequence[Layer]]) -> Domain:
        if not networks:
            raise ValueError("a domain needs at least one network")
        layers = [layer for n in networks for layer in n]

        def span(values) -> tuple:
            values = list(values)
            return min(values), max(values)

        return cls(len(networks), span(float(sum(l.macs for l in n)) for n in networks),
                   span(float(l.macs) for l in layers), span(l.out_shape[0] for l in layers if l.kind == "conv"),
                   span(l.out_shape[1] for l in layers), span(n[0].in_shape[1] for n in networks),
                   tuple(sorted({l.bits for l in layers})))

    def outside(self, layers: Sequence[Layer]) -> list[str]:
        """Why `layers` lie outside the domain, one reason per bound crossed; empty inside."""
        reasons = []

        def check(what: str, value: float, bounds: tuple, unit: str = "") -> None:
            low, high = bounds
            if not low <= value <= high:
                side = "below" if value < low else "above"
                span = _n(low) if low == high else f"{_n(low)}-{_n(high)}"
                reasons.append(f"{what} {_n(value)}{unit} {side} the calibrated {span}{unit}")

        check("network MACs", sum(l.macs for l in layers), self.network_macs)
        check("smallest layer's MACs", min(l.macs for l in layers), self.layer_macs)
        check("largest layer's MACs", max(l.macs for l in layers), self.layer_macs)
        convs = [l.out_shape[0] for l in layers if l.kind == "conv"] or [self.channels[0]]
        check("fewest channels", min(convs), self.channels)
        check("most channels", max(convs), self.channels)
        check("smallest feature map", min(l.out_shape[1] for l in layers), self.spatial, " px")
        check("largest feature map", max(l.out_shape[1] for l in layers), self.spatial, " px")
        check("input resolution", layers[0].in_shape[1], self.resolution, " px")
        unseen = sorted({l.bits for l in layers} - set(self.bits))
        if unseen:
            reasons.append(f"{'/'.join(map(str, unseen))}-bit layers, never measured "
                           f"(calibrated: {'/'.join(map(str, self.bits))})")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Domain:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)


def extrapolated(trials: Sequence[Any]) -> dict[int, str]:
    """Complete Optuna trials whose latency was predicted outside the predictor's domain, with the reasons."""
    return {t.number: t.user_attrs[EXTRAPOLATED] for t in trials
            if t.state.name == "COMPLETE" and t.user_attrs.get(EXTRAPOLATED)}


def summary(outside: Mapping[int, str], complete: int, target: str) -> None:
    """The study summary's line about them, printed only when there are any."""
    if outside:
        first = min(outside)
        print(f"latency: {len(outside)} of {complete} trials lie outside the networks {target}'s predictor was "
              f"calibrated on, so their latencies are extrapolated (trial {first}: {outside[first]}); MLflow tag "
              "latency.extrapolated. Measure such networks on the device (python -m search.calibrate runner=adb).")


def _n(x: float) -> str:
    """1.2M, 350k, 28: short enough for a tag."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"
