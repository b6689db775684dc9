"""Does a phone predictor's structure generalize to networks, resolutions and devices it was not fitted on?
Leave-one-table-out over the published tables (`search.published`): each table of at least `MIN_NETWORKS`
networks is held out in turn, the structure is fitted on everything else (the reference set and every other
table's float sets), and the held-out table is predicted with one speed scale, itself fitted leave-one-out
within the table (each network predicted with the scale the table's other networks give).

The baselines get the same treatment, so no side has free parameters the other lacks: MACs with one scale, and
MACs plus a constant (scale and constant fitted leave-one-out within the table). Metrics: mean relative error and
Spearman's rank correlation, with a bootstrap interval of the mean error over the table's networks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from spaces import Layer

from . import fitting, latency, published

MIN_NETWORKS = 8


@dataclass(frozen=True)
class Score:
    error: float  # mean relative error, leave-one-out scale (and constant) within the table
    interval: tuple[float, float]  # 90% bootstrap interval of that mean over the table's networks
    spearman: float


@dataclass(frozen=True)
class Held:
    """One held-out table and how each predictor did on it."""

    name: str
    networks: int
    scores: dict[str, Score]  # "predictor", "macs", "macs+constant" and any other predictor asked for


def scale_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Each network's relative error under the median measured/predicted ratio of the table's other networks."""
    out = []
    for i in range(len(measured)):
        others = np.arange(len(measured)) != i
        k = np.median(measured[others] / predicted[others])
        out.append(abs(k * predicted[i] - measured[i]) / measured[i])
    return np.array(out)


def affine_errors(macs: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Each network's relative error under a + b x MACs least-squares fitted on the table's other networks."""
    out = []
    for i in range(len(measured)):
        others = np.arange(len(measured)) != i
        b, a = np.polyfit(macs[others], measured[others], 1)
        out.append(abs(a + b * macs[i] - measured[i]) / measured[i])
    return np.array(out)


def score(errors: np.ndarray, predicted: np.ndarray, measured: np.ndarray, seed: int = 0) -> Score:
    from scipy.stats import spearmanr

    rng = random.Random(seed)
    n = len(errors)
    boot = sorted(float(np.mean([errors[rng.randrange(n)] for _ in range(n)])) for _ in range(1000))
    return Score(float(errors.mean()), (boot[50], boot[949]), float(spearmanr(predicted, measured).statistic))


def held_out_tables(rows: Sequence[published.Row]) -> dict[str, list[published.Row]]:
    """The sets of at least MIN_NETWORKS networks: what is held out, one at a time."""
    return {name: group for name, group in published.sets(rows).items() if len(group) >= MIN_NETWORKS}


def leave_one_table_out(reference: tuple[Sequence[Sequence[Layer]], Sequence[float]], rows: Sequence[published.Row],
                        template: latency.Predictor, reference_weight: float,
                        others: Mapping[str, latency.Predictor] | None = None) -> list[Held]:
    """Every held-out table scored (see the module docstring). `template` gives the kernels, speed-ups and the
    like of the predictor to fit; `others` are fixed predictors scored beside it (e.g. the one in use today)."""
    results = []
    for name, group in held_out_tables(rows).items():
        fitted = fit(reference, published.float_sets(rows, leave_out=group[0].table), template, reference_weight)
        measured = np.array([r.latency_ms for r in group])
        macs = np.array([sum(layer.macs for layer in r.layers) / 1e6 for r in group])
        scores = {}
        for label, predictor in {"predictor": fitted, **(others or {})}.items():
            predicted = np.array([predictor.predict(list(r.layers)) for r in group])
            scores[label] = score(scale_errors(predicted, measured), predicted, measured)
        scores["macs"] = score(scale_errors(macs, measured), macs, measured)
        scores["macs+constant"] = score(affine_errors(macs, measured), macs, measured)
        results.append(Held(name, len(group), scores))
    return results


def fit(reference: tuple[Sequence[Sequence[Layer]], Sequence[float]],
        sets: Mapping[str, tuple[Sequence[Sequence[Layer]], Sequence[float]]], template: latency.Predictor,
        reference_weight: float) -> latency.Predictor:
    """A predictor like `template`, its coefficients fitted on the reference set and `sets` together."""
    import dataclasses

    coefficients, _ = fitting.fit_sets({"reference": reference, **sets}, "reference", template.kernels,
                                       template.sparse_kernels, weights={"reference": reference_weight})
    return dataclasses.replace(template, coefficients=coefficients, channel_tile=1)


def pooled(results: Sequence[Held], label: str) -> float:
    """Mean error over every held-out network (tables weighted by their size)."""
    return sum(h.scores[label].error * h.networks for h in results) / sum(h.networks for h in results)

