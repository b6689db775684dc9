"""Fitting a latency predictor's coefficients to whole-network measurements (`latency.features` of each
network against its measured milliseconds): non-negative, so no layer is ever priced below nothing, and by
relative error, so a miss counts by how much of the network's time it is. `calibrate` and the cross-validation
fit through here; a `latency.Predictor` holds the result."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from spaces import Layer

from .latency import TILES, execution, features


def fit_tiled(networks: Sequence[Sequence[Layer]], latency_ms: Sequence[float], kernels: Mapping[int, str],
              sparse_kernels: bool) -> tuple[int, dict[str, float]]:
    """The channel tile of `TILES` whose fit errs least on the measurements (mean absolute relative error in
    sample: every tile fits the same coefficients, so none is favoured), and that fit's coefficients."""
    y = np.asarray(latency_ms, float)

    def error(tile: int, coefficients: dict[str, float]) -> float:
        predicted = [sum(coefficients.get(k, 0.0) * v for k, v in features(n, kernels, sparse_kernels, tile).items())
                     for n in networks]
        return float(np.mean(np.abs(np.asarray(predicted) / y - 1)))

    fits = {tile: fit(networks, latency_ms, kernels, sparse_kernels, tile=tile) for tile in TILES}
    tile = min(fits, key=lambda t: error(t, fits[t]))
    return tile, fits[tile]


def fit(networks: Sequence[Sequence[Layer]], latency_ms: Sequence[float], kernels: Mapping[int, str],
        sparse_kernels: bool, iterations: int = 30, tile: int = 1) -> dict[str, float]:
    """Non-negative coefficients minimising the sum of absolute relative errors (iteratively
    reweighted least squares). Relative, because a 2 ms miss matters on a 20 ms network and not on
    a 200 ms one; absolute rather than squared, because phone measurements carry runs of outliers
    (interference, throttling) that a squared loss chases."""
    rows = [features(layers, kernels, sparse_kernels, tile) for layers in networks]
    names = _names(rows, [networks], kernels)
    x = np.array([[r.get(k, 0.0) for k in names] for r in rows])
    ones = np.ones(len(rows))
    return dict(zip(names, map(float, _irls(x, np.asarray(latency_ms, float), ones, ones, iterations))))


def fit_sets(sets: Mapping[str, tuple[Sequence[Sequence[Layer]], Sequence[float]]], reference: str,
             kernels: Mapping[int, str], sparse_kernels: bool, tile: int = 1, rounds: int = 8,
             iterations: int = 0, weights: Mapping[str, float] | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """One structure of what costs what, fitted across measurement sets (devices, runtimes, threads) that each run
    at a speed of their own: latency = scale[set] x sum(coefficient x feature). Alternates the coefficients (the
    relative-error fit of `fit`, every set weighing the same in total, so 5,000 rows of one phone count as much
    as 17 of another, unless `weights` gives a set's total weight) and each set's scale (the median ratio of measured to predicted). Returns the coefficients
    in the `reference` set's milliseconds and every set's scale relative to it (the reference's is 1).

    Squared relative error by default (`iterations=0`), not `fit`'s absolute one: across sets of different
    families an absolute loss fits some sets exactly and gives up on others (measured on snapdragon665's sets: the
    A50's held-out rows fell to 38% within +-10%, Spearman 0.13; squared: 90%, 0.88)."""
    if reference not in sets:
        raise ValueError(f"reference set {reference!r} is not among the sets")
    order = list(sets)
    rows, ys, groups = [], [], []
    for g, name in enumerate(order):
        networks, latency_ms = sets[name]
        rows += [features(layers, kernels, sparse_kernels, tile) for layers in networks]
        ys += list(latency_ms)
        groups += [g] * len(networks)
    y, group = np.asarray(ys, float), np.asarray(groups)
    total = np.array([1.0 if weights is None else weights.get(name, 1.0) for name in order])
    row_weights = total[group] / np.bincount(group)[group]
    names = _names(rows, [n for n, _ in sets.values()], kernels)
    x = np.array([[r.get(k, 0.0) for k in names] for r in rows])
    macs = np.array([sum(layer.macs for layer in layers) for name in order for layers in sets[name][0]], float)
    scale = np.array([float(np.median(y[group == g] / macs[group == g])) for g in range(len(order))])
    scale /= scale.mean()  # a start where each set's speed is its milliseconds per MAC
    for _ in range(rounds):
        coef = _irls(x, y, row_weights, scale[group], iterations)
        predicted = x @ coef
        scale = np.array([float(np.median(y[group == g] / np.maximum(predicted[group == g], 1e-12)))
                          for g in range(len(order))])
    ref = scale[order.index(reference)]
    return ({k: float(c * ref) for k, c in zip(names, coef)}, {name: float(s / ref) for name, s in zip(order, scale)})


def _names(rows: list[dict[str, float]], networks: Sequence[Sequence[Sequence[Layer]]],
           kernels: Mapping[int, str]) -> list[str]:
    names = sorted({k for r in rows for k in r})
    if all(len(set(execution(layers, kernels))) == 1 for group in networks for layers in group):
        # one precision everywhere (e.g. a phone's fp32 measurements): the only layout change is at the
        # classifier, a near-constant that would price every precision change of a mixed network at random;
        # left unfitted, a border costs what the target declares (Predictor.coefficient)
        names = [k for k in names if not k.startswith("layout.")]
    return names


def _irls(x: np.ndarray, y: np.ndarray, weights: np.ndarray, scale: np.ndarray, iterations: int) -> np.ndarray:
    """Non-negative coefficients for the feature matrix `x` minimising the weighted relative error of
    `scale x prediction` against `y`: squared with `iterations=0`, absolute after `iterations` reweightings."""
    from scipy.optimize import nnls

    a = x * scale[:, None] / y[:, None]
    columns = np.maximum(a.max(0), 1e-12)  # columns of similar size keep NNLS well conditioned
    a = a / columns
    b = np.ones(len(y))
    root = np.sqrt(weights)
    coef, _ = nnls(a * root[:, None], b * root)
    for _ in range(iterations):
        w = root / np.sqrt(np.maximum(np.abs(a @ coef - b), 1e-3))
        coef, _ = nnls(a * w[:, None], b * w)
    return coef / columns
