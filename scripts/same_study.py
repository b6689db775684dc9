"""Do two runs of a study hold the same trials? For a change meant to leave the search alone (a refactor):
run the default study at the commit before it and after it, on one machine with the same seed, then

    .venv/bin/python scripts/same_study.py BEFORE_STUDY_FOLDER AFTER_STUDY_FOLDER

compares them trial for trial: each trial's state, params, objective values and metrics (its user attributes
but the seconds it took), exactly, since one machine, one seed and `ray.in_order` make a study repeatable to the
bit; and the front. Prints the first differences and exits 1 if there are any."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import optuna

from search import pareto, storage

TIMED = ("evaluate_s",)  # how long a trial took, not what it is: never compared


def trials(folder: Path) -> tuple[list[optuna.trial.FrozenTrial], list[str]]:
    """The study in `folder` (its journal; the study is named after its folder) and its objectives."""
    study = storage.load(folder, folder.name)
    return study.trials, study.metric_names or []


def describe(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"state": t.state.name, "params": t.params, "values": t.values,
            "attrs": {k: v for k, v in t.user_attrs.items() if k not in TIMED}}


def differences(before: list[optuna.trial.FrozenTrial], after: list[optuna.trial.FrozenTrial]) -> list[str]:
    out = [f"{len(before)} trials before, {len(after)} after"] if len(before) != len(after) else []
    for b, a in zip(before, after):
        was, now = describe(b), describe(a)
        for key in was:
            if was[key] != now[key]:
                if isinstance(was[key], dict):
                    keys = sorted(k for k in was[key].keys() | now[key].keys() if was[key].get(k) != now[key].get(k))
                    out.append(f"trial {b.number}: {key} differ at {', '.join(keys[:4])}: "
                               + "; ".join(f"{k} {was[key].get(k)!r} -> {now[key].get(k)!r}" for k in keys[:2]))
                else:
                    out.append(f"trial {b.number}: {key} {was[key]!r} -> {now[key]!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    (before, objectives), (after, _) = trials(args.before), trials(args.after)
    found = differences(before, after)
    fronts = [[p.trial for p in pareto.front(pareto.points(t, objectives))] for t in (before, after)]
    if fronts[0] != fronts[1]:
        found.append(f"front {fronts[0]} -> {fronts[1]}")
    for line in found[:20]:
        print(line)
    if found:
        sys.exit(f"{len(found)} differences between {args.before} and {args.after}")
    print(f"the same study: {len(before)} trials, trial for trial; front {fronts[0]}")


if __name__ == "__main__":
    main()
