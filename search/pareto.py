"""The Pareto front of a study's trials as plain rows: which trials are non-dominated (feasible
ones only), their non-domination rank, the front's hypervolume against a fixed reference point,
and the picks `promote` offers (knee, most accurate under budgets, fastest within an accuracy drop).

Domination and hypervolume are Optuna's own (the same code NSGA-II ranks with); this module only
turns trials into loss vectors (maximised objectives negated) and decides what "feasible" means:
every constraint the driver set on the trial (`trial.set_constraint`, one per budget) is <= 0.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from optuna._hypervolume import compute_hypervolume  # pinned Optuna 5.0.0: no public equivalent
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial, TrialState

from .objectives import DIRECTIONS


@dataclass(frozen=True)
class Point:
    """One complete trial, as the front and its files see it."""

    trial: int
    values: dict[str, float]  # every objective and metric the trial recorded
    params: dict[str, Any]
    feasible: bool
    baseline: str = ""
    rank: int = 0  # 1 = non-dominated among the feasible trials; infeasible trials rank after all feasible ones
    pareto: bool = False


REPEAT_OF = "repeat_of"  # user attr of a trial told an earlier trial's result: the same network (`study.Driver.repeat`)


def points(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> list[Point]:
    """The complete trials, one per network, ranked on `objectives` (names from objectives.DIRECTIONS). A repeat
    is left out when the trial it repeats is among `trials`: the same point twice would crowd the front."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    numbers = {t.number for t in done}
    done = [t for t in done if t.user_attrs.get(REPEAT_OF) not in numbers]
    if not done:
        return []
    loss = losses([t.user_attrs for t in done], objectives)
    penalty = np.array([sum(max(c, 0.0) for c in t.constraints.values()) for t in done])
    ranks = _fast_non_domination_rank(loss, penalty=penalty) + 1
    return [Point(t.number, {k: v for k, v in t.user_attrs.items() if isinstance(v, (int, float))}, dict(t.params),
                  bool(p <= 0), t.user_attrs.get("baseline", ""), int(r), bool(r == 1 and p <= 0))
            for t, p, r in zip(done, penalty, ranks)]


def rerank(pts: Sequence[Point], objectives: Sequence[str]) -> list[Point]:
    """`pts` ranked again on their values as they are now (e.g. latency measured rather than predicted);
    an infeasible point stays off the front."""
    if not pts:
        return []
    penalty = np.array([0.0 if p.feasible else 1.0 for p in pts])
    ranks = _fast_non_domination_rank(losses([p.values for p in pts], objectives), penalty=penalty) + 1
    return [replace(p, rank=int(r), pareto=bool(r == 1 and p.feasible)) for p, r in zip(pts, ranks)]


def losses(values: Sequence[Mapping[str, float]], objectives: Sequence[str]) -> np.ndarray:
    """Rows of `values` as loss vectors: every objective minimised."""
    sign = np.array([-1.0 if DIRECTIONS[o] == "maximize" else 1.0 for o in objectives])
    return np.array([[v[o] for o in objectives] for v in values], dtype=float).reshape(-1, len(objectives)) * sign


def front(pts: Sequence[Point]) -> list[Point]:
    return [p for p in pts if p.pareto]


def hypervolume(pts: Sequence[Point], objectives: Sequence[str], reference: Mapping[str, float]) -> float:
    """Volume dominated by the feasible front and bounded by `reference` (in objective units:
    e.g. accuracy 90, latency_ms 20). Points not better than the reference on every objective add nothing."""
    ref = losses([reference], objectives)[0]
    loss = losses([p.values for p in front(pts)], objectives)
    loss = loss[np.all(loss < ref, axis=1)]
    return float(compute_hypervolume(loss, ref)) if len(loss) else 0.0


def knee(pts: Sequence[Point], objectives: Sequence[str]) -> Point:
    """The front point closest to the ideal point (best of each objective) once every objective is
    scaled to [0, 1] across the front: the balanced compromise, independent of units."""
    candidates = front(pts)
    if not candidates:
        raise ValueError("no feasible complete trial: the front is empty")
    loss = losses([p.values for p in candidates], objectives)
    lo, span = loss.min(axis=0), np.ptp(loss, axis=0)
    scaled = (loss - lo) / np.where(span > 0, span, 1.0)
    return candidates[int(np.argmin(np.linalg.norm(scaled, axis=1)))]


def most_accurate(pts: Sequence[Point], budgets: Mapping[str, float | None]) -> Point:
    """The most accurate feasible trial within every given budget (ties: the faster one)."""
    fits = [p for p in pts if p.feasible and all(v is None or p.values[k] <= v for k, v in budgets.items())]
    if not fits:
        said = ", ".join(f"{k} <= {v}" for k, v in budgets.items() if v is not None) or "no budget"
        raise ValueError(f"no feasible complete trial within {said}")
    return max(fits, key=lambda p: (p.values["accuracy"], -p.values["latency_ms"]))


def accuracy_floor(pts: Sequence[Point], max_drop: float) -> float:
    """The lowest accuracy within `max_drop` points of the float baseline's."""
    base = next((p for p in pts if p.baseline == "float"), None)
    if base is None:
        raise ValueError("max_drop: the study has no float baseline to measure the accuracy drop from")
    return base.values["accuracy"] - max_drop


def least(pts: Sequence[Point], floor: float, objective: str) -> Point:
    """The feasible trial lowest in `objective` (latency_ms: the fastest; size_kb: the smallest) at least `floor`
    accurate (ties: the more accurate): what a deployment with an accuracy budget wants, where the knee is only the
    front's balance."""
    fits = [p for p in pts if p.feasible and p.values["accuracy"] >= floor]
    if not fits:
        raise ValueError(f"no feasible complete trial reaches accuracy {floor:.2f} (max_drop)")
    return min(fits, key=lambda p: (p.values[objective], -p.values["accuracy"]))


def write_csv(pts: Sequence[Point], path: Path) -> None:
    """One row per point (complete trial, repeats left out): its number, front membership and rank, every
    choice, every value."""
    params = sorted({k for p in pts for k in p.params})
    values = sorted({k for p in pts for k in p.values})
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["trial", "pareto", "rank", "feasible", "baseline", *params, *values])
        for p in sorted(pts, key=lambda p: (p.rank, p.trial)):
            out.writerow([p.trial, p.pareto, p.rank, p.feasible, p.baseline, *(p.params.get(k, "") for k in params),
                          *(p.values.get(k, "") for k in values)])
