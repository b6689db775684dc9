"""Validate the phone target's predictor leave-one-table-out on the published phone latencies, and show how it
orders the default study's networks against the predictor it replaced. Writes the README section between
<!-- results:phone --> and <!-- /results:phone -->.

    .venv/bin/python scripts/phone_report.py [--study outputs/report] [--old conf/predictors/snapdragon665.json@REV]

Everything is computed from the committed measurement files (conf/measurements/) in a minute or two; the study
part reads a default study made by scripts/search_report.py (its networks are predicted again, nothing trains).
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import subprocess
from pathlib import Path

import optuna
from optuna.trial import TrialState
from readme_results import machine, write_readme

from search import calibrate, crossval, latency, pareto, published, storage
from search import data as datasets
from search.config import compose, resolve
from search.domain import Domain
from search.study_config import recorded
from search.tracking import Tracker

ROOT = Path(__file__).resolve().parent.parent
MARK = "phone"
WEIGHTS = (1, 2, 4, 8)  # the reference set's weight: chosen by leave-one-table-out
OLD = "29fa8a3"  # the commit whose conf/predictors/snapdragon665.json was fitted on the A50 alone


def reference_set(r: calibrate.Request):
    space = r.build_space()
    fit_rows, held = calibrate.rows_to_fit(r, space)
    return (([space.layers(m.candidate) for m in fit_rows], [m.latency_ms for m in fit_rows]),
            ([space.layers(m.candidate) for m in held], [m.latency_ms for m in held]))


def old_predictor(rev: str) -> latency.Predictor:
    text = subprocess.run(["git", "show", f"{rev}:conf/predictors/snapdragon665.json"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = ROOT / "outputs" / "phone-report" / "old-snapdragon665.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return latency.Predictor.load(path)


def validation(r: calibrate.Request, rows, old) -> tuple[list[str], list[crossval.Held]]:
    target = r.target
    reference, held = reference_set(r)
    template = latency.Predictor(target["name"], coefficients={}, **{**latency.declared(target), "scale": 1.0})
    sets = calibrate.published_sets(target)
    used = target["published"]["reference_weight"]
    choice, by_weight = [], {}
    for w in sorted({*WEIGHTS, used}):
        fitted = crossval.fit(reference, sets, template, w)
        a50 = latency.Report.of([fitted.predict(n) for n in held[0]], held[1])
        by_weight[w] = crossval.leave_one_table_out(reference, rows, template, w, {"before (A50 only)": old})
        choice.append(f"| {w} | {crossval.pooled(by_weight[w], 'predictor'):.1%} | {a50.within_10pct:.1%} "
                      f"| {a50.spearman:.3f} |")
    results = by_weight[used]
    labels = ["predictor", "before (A50 only)", "macs", "macs+constant"]
    head = ["| held-out table | networks | " + " | ".join(
        f"{'this predictor' if k == 'predictor' else k}: error [90% interval], Spearman" for k in labels) + " |",
        "|---|---|" + "---|" * len(labels)]
    body = [f"| {h.name} | {h.networks} | " + " | ".join(
        f"{h.scores[k].error:.1%} [{h.scores[k].interval[0]:.1%}, {h.scores[k].interval[1]:.1%}], "
        f"{h.scores[k].spearman:.3f}" for k in labels) + " |" for h in results]
    pooled = "| pooled | " + str(sum(h.networks for h in results)) + " | " + " | ".join(
        f"**{crossval.pooled(results, k):.1%}**" for k in labels) + " |"
    lines = [f"Leave-one-table-out on the published phone latencies (`conf/measurements/published_mobilenets.csv`; "
             f"computed by `scripts/phone_report.py` on {machine()}): each table of at least {crossval.MIN_NETWORKS} "
             "networks is held out, the structure fitted on the A50's FBNet rows and every other table's float sets "
             "(a speed scale each), and the held-out networks predicted with one scale fitted leave-one-out within "
             "the table. MACs get one scale the same way, MACs + constant a scale and a constant (both leave-one-out); "
             "the predictor used before this one (A50 alone) one scale. Error: mean relative error; interval: "
             "bootstrap over the table's networks.", "", *head, *body, pooled, "",
             f"The A50 set's weight in the fit (`published.reference_weight`) was chosen the same way; `{used}` is "
             "used. The A50's own held-out rows (1,000 of 5,000, never fitted on) are the last two columns:", "",
             "| reference weight | pooled error, held-out tables | A50 held-out within ±10% | A50 Spearman |",
             "|---|---|---|---|", *choice]
    return lines, results


def described(skipped: list[published.Skipped], rows: list[published.Row]) -> list[str]:
    why = collections.Counter(s.why for s in skipped)
    return ["", f"{len(rows)} of {len(rows) + len(skipped)} published rows are networks this project builds and "
            "describes (`search/describe.py`); the others are left out: " + "; ".join(
                f"{n} rows: {w}" for w, n in why.most_common()) + ". MobileNetV3-Large at width 0.75 describes "
            "as 140 MMACs against the table's 155 (torchvision's rounding of the squeeze-excite and expansion "
            "channels), so its row is priced on a slightly smaller network than was timed."]


def speedup(target) -> list[str]:
    fit = calibrate.fitted_speedup(target)
    eras = "; ".join(f"{era}: {v[0]:.2f}x [{v[1][0]:.2f}, {v[1][1]:.2f}] over {v[2]} pairs"
                     for era, v in fit["by_era"].items())
    return ["", f"int8 speed-up over fp32, fitted from same-network pairs on A73-class cores without dot-product "
            f"(`conf/measurements/int8_speedup_pairs_derived.csv`, geometric mean and 90% bootstrap interval by era): "
            f"{eras}. The newest era's **{fit['value']:.2f}x** [{fit['interval'][0]:.2f}, {fit['interval'][1]:.2f}] "
            "is the target's; the default study's front under both ends of the interval is in the search section. One XNNPACK-era report on an A73 (XNNPACK issue 6653, a 32-bit build) measured 1.28x: today's "
            "runtime may gain less."]


def study_part(folder: Path, old: latency.Predictor, new: latency.Predictor) -> list[str]:
    study_name = "report-default"
    if not (folder / study_name).exists():
        return ["", f"(No default study at {folder}: run scripts/search_report.py first for the front comparison.)"]
    study = storage.load(folder / study_name, study_name)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    config = recorded(Tracker(f"sqlite:///{folder / 'mlflow.db'}", study_name, create=False).study_config())
    d = datasets.load(config.data, config.seed, str(folder / "cache"))
    space = config.build_space(d.input_shape, d.num_classes)
    layers = {t.number: space.layers(space.sample(optuna.trial.FixedTrial(t.params))) for t in done}

    def front(predictor: latency.Predictor) -> tuple[set[int], dict[int, float]]:
        trials, ms = [], {}
        for t in done:
            t = copy.deepcopy(t)
            t.user_attrs["latency_ms"] = ms[t.number] = predictor.predict(layers[t.number])
            trials.append(t)
        return {p.trial for p in pareto.front(pareto.points(trials, config.objectives))}, ms

    (before, ms_old), (after, ms_new) = front(old), front(new)
    reasons = collections.Counter(" ".join(r.split(" ")[:2]).rstrip(",") for n in layers for r in new.extrapolated(layers[n]))
    outside = sum(bool(new.extrapolated(layers[n])) for n in layers)
    domain = Domain.from_dict(new.domain)
    macs = sorted(sum(x.macs for x in layers[n]) for n in layers)
    from scipy.stats import spearmanr

    rho = spearmanr([ms_old[n] for n in layers], [ms_new[n] for n in layers]).statistic
    return ["", f"The default study ({len(done)} networks of `scripts/search_report.py`'s run) under the predictor "
            f"used before (A50 alone) and this one: front of {len(before)} and of {len(after)} trials, "
            f"{len(before & after)} in both, {len(after - before)} new, {len(before - after)} dropped; the two order "
            f"its networks with Spearman {rho:.3f}. **Where it stands: {outside} of {len(layers)} networks lie outside "
            f"the calibrated domain** ({macs[0] / 1e6:.2f}-{macs[-1] / 1e6:.2f} MMACs at "
            f"{space.input_shape[1]} px, against {domain.network_macs[0] / 1e6:.1f}-"
            f"{domain.network_macs[1] / 1e6:.0f} MMACs at {domain.resolution[0]}-{domain.resolution[1]} px; "
            "bounds crossed: " + ", ".join(f"{k} ({n})" for k, n in reasons.most_common()) + "), so their predicted "
            "milliseconds are extrapolations and every such trial carries the MLflow tag `latency.extrapolated`. "
            "No public table times networks this small on a phone; a user with one should measure them there "
            "(`python -m search.calibrate target=... runner=adb`)."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=ROOT / "outputs" / "report")
    parser.add_argument("--old", default=OLD, help="the commit of the predictor compared against")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    r = calibrate.Request.of(resolve(compose(["target=snapdragon665", "space=fbnet"], "calibrate")))
    rows, skipped = published.read(r.target["published"]["file"])
    old = old_predictor(args.old)
    lines, _ = validation(r, rows, old)
    new = latency.for_target(r.target)
    text = "\n".join([*lines, *described(skipped, rows), *speedup(r.target), *study_part(args.study, old, new)])
    print(text)
    write_readme(text, args.readme, MARK)
    (ROOT / "outputs" / "phone-report" / "phone.json").write_text(json.dumps({"text": text}))


if __name__ == "__main__":
    main()
