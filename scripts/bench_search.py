"""Search efficiency, side by side: the joint search (the default sampler, conf/sampler/tpe.yaml: TPE over
width, bits and sparsity at once), NSGA-II (conf/sampler/nsga2.yaml), random search and a sequential
pipeline, on the same data, space, target, predictor, evaluator and budget, for several seeds. The budget is networks
trained: a trial that repeats a network its study already evaluated is told the stored result, trains nothing, and
does not count (a method that proposes the same network again would otherwise spend less and be compared as if alike).

    .venv/bin/python scripts/bench_search.py            # 5 seeds x 30 networks on the default data, rewrites README
    .venv/bin/python scripts/bench_search.py --quick    # digits, 1 seed, 6 networks: keeps the script working
    .venv/bin/python scripts/bench_search.py --no-run   # re-read the last run's studies, rewrite README
    .venv/bin/python scripts/bench_search.py --resume   # continue an interrupted run

The sequential pipeline spends a third of the budget on each stage: widths (float, dense), then
per-layer sparsity at the chosen widths, then per-layer bits at the chosen widths and sparsity. Each
stage is its own study, as a pipeline is run: its sampler models that stage's trials only (in one study,
TPE would model the fixed values of earlier stages and propose their knee again), Optuna's
PartialFixedSampler fixes what is chosen, and a later stage starts from the previous stage's knee.
Every method begins with the same two baselines (float full-width, uniform 8-bit), and every study
uses the same data split and supernet (seed 0): the seeds vary the search only (`search_seed`).
Hypervolume is of the (validation accuracy, predicted latency) front against the fixed reference
point in conf/search.yaml (pareto.reference), after each network trained.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_results import evaluation, machine, write_readme  # noqa: E402
from search import config, pareto, preflight, storage  # noqa: E402
from search.objectives import DIRECTIONS  # noqa: E402
from search.pareto import REPEAT_OF  # noqa: E402
from search.storage import for_study  # noqa: E402
from search.study_config import StudyConfig  # noqa: E402
from search.study import run, trial_seed  # noqa: E402
from search.workers import Workers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("joint", "nsga2", "random", "sequential")
STAGES = ("width.", "sparsity.", "bits.")  # the sequential pipeline's order


def compose(folder: Path, name: str, seed: int, trials: int, quick: bool, sampler: str | dict | None = None) -> dict:
    """The study's config: `sampler` is a conf/sampler option (the project's settings), a sampler config,
    or None for the default one."""
    overrides = [f"study.name={name}", f"study.dir={folder / name}", f"search_seed={seed}", f"n_trials={trials}",
                 f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"cache_dir={folder / 'cache'}", "target=snapdragon665"]
    if quick:
        overrides += ["data=digits", "supernet.epochs=3", "finetune.steps=5", "finetune.bn_batches=2"]
    cfg = config.resolve(config.compose(overrides + ([f"sampler={sampler}"] if isinstance(sampler, str) else [])))
    if isinstance(sampler, dict):
        cfg["sampler"] = sampler
    return cfg


def trained(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that trained their network: not repeats of an earlier one."""
    return [t for t in trials if REPEAT_OF not in t.user_attrs]


def until_trained(cfg: dict, networks: int) -> optuna.Study:
    """Run (or resume) the study until it has trained `networks` networks, repeats not counted."""
    n_trials = networks
    for _ in range(3 * networks + 10):  # each round asks for as many trials as networks are missing
        study = run(preflight.study({**cfg, "n_trials": n_trials}))
        done = study.get_trials(states=(TrialState.COMPLETE,))
        missing = networks - len(trained(done))
        if missing <= 0:
            return study
        n_trials = len(done) + missing
    raise SystemExit(f"{study.study_name}: the sampler keeps proposing networks it has evaluated")


def studies(name: str) -> list[str]:
    """The studies a method's run is made of: one, or the sequential pipeline's one per stage."""
    if not name.startswith("sequential"):
        return [name]
    return [f"{name}-{prefix.rstrip('.')}" for prefix in STAGES]


def sequential(folder: Path, name: str, seed: int, networks: int, quick: bool) -> None:
    """Three stages, each its own study fixing what the stages before it chose (their knees). The first starts with
    the baselines, as every study does; a later one starts from the previous stage's knee (trained again: it counts)."""
    fixed: dict = {}
    float_dense = _float_dense(folder, name, seed, quick)
    for i, (prefix, stage) in enumerate(zip(STAGES, studies(name))):
        budget = networks - (len(STAGES) - 1) * (networks // len(STAGES)) if i == 0 else networks // len(STAGES)
        later = {k: v for k, v in float_dense.items() if k.startswith(STAGES[i + 1:])}  # not chosen yet
        sampler = {"_target_": "optuna.samplers.PartialFixedSampler", "fixed_params": fixed | later,
                   "base_sampler": compose(folder, stage, seed, 1, quick)["sampler"]}  # the joint search's own
        cfg = compose(folder, stage, seed, budget, quick, sampler)
        config = StudyConfig.of(cfg)
        if i and storage.existing(config.where) is None:  # not the baselines: the previous knee
            optuna.create_study(study_name=stage, storage=for_study(config.where),
                                directions=[DIRECTIONS[o] for o in config.objectives]).enqueue_trial(float_dense | fixed)
        study = until_trained(cfg, budget)
        knee = pareto.knee(pareto.points(study.get_trials(), config.objectives), config.objectives)
        fixed |= {k: v for k, v in study.trials[knee.trial].params.items() if k.startswith(prefix)}


def _float_dense(folder: Path, name: str, seed: int, quick: bool) -> dict:
    """Float, dense values of every choice: what a later stage has not chosen yet."""
    from search import data

    config = StudyConfig.of(compose(folder, name, seed, 1, quick))
    d = data.load(config.data, config.seed, config.cache_dir)
    return config.build_space(d.input_shape, d.num_classes).baselines()["float"]


def neighbours(folder: Path, quick: bool, workers: Workers) -> list[dict]:
    """The uniform 8-bit baseline and each one-step compression of it (one width a step narrower, or one layer group a
    step sparser), evaluated exactly as trials are (on a worker, from the study's supernet, with the baseline trial's
    fine-tuning seed): is there a network near the baseline that keeps its accuracy and is faster?"""
    ev = evaluation(compose(folder, "joint-s0", 0, 1, quick))
    d, space, predictor = ev.data, ev.space, ev.config.predictor()
    base = space.baselines()["int8"]
    steps = {"uniform 8-bit baseline": {}}
    for name, value in base.items():
        kind = name.split(".")[0]
        if kind == "width":
            step = max((w for w in ev.config.space["widths"] if w < value), default=None)
        elif kind == "sparsity":
            step = min((s for s in ev.config.space["sparsity"] if s > value), default=None)
        else:
            continue
        if step is not None:
            steps[f"`{name}={step}`"] = {name: step}
    inputs = ev.inputs(workers)
    candidates = {label: space.sample(optuna.trial.FixedTrial(base | change)) for label, change in steps.items()}
    number = list(space.baselines()).index("int8")  # the baseline's trial number in every study
    refs = {label: inputs.submit(workers, c, trial_seed(ev.config.seed, number)) for label, c in candidates.items()}
    return [{"network": label, **{k: workers.result(ref)[0][0][k] for k in ("accuracy", "test_accuracy")},
             "latency_ms": predictor.predict(space.layers(candidates[label])), "val_images": len(d.val.y)}
            for label, ref in refs.items()]


def curve(folder: Path, name: str, seed: int, networks: int, quick: bool) -> dict:
    """Hypervolume after each network trained, where the baselines stand, and how many trials repeated a network
    evaluated before (told its result, not trained again: a repeat adds no point to the front). The sequential
    pipeline's stages are read as one run, in the order their trials completed."""
    done = []
    for study_name in studies(name):
        config = StudyConfig.of(compose(folder, study_name, seed, networks, quick))
        study = optuna.load_study(study_name=study_name, storage=for_study(config.where))
        done += study.get_trials(states=(TrialState.COMPLETE,))
    done.sort(key=lambda t: t.datetime_complete)
    objectives, reference = config.objectives, config.reference
    hv = [pareto.hypervolume(pareto.points(done[:k + 1], objectives), objectives, reference)
          for k, t in enumerate(done) if REPEAT_OF not in t.user_attrs]
    pts = pareto.points(done, objectives)
    baselines = {b.baseline: {"dominated_by": dominators(b, pts, objectives), **{k: b.values[k] for k in objectives}}
                 for b in pts if b.baseline}
    return {"hypervolume": hv, "baselines": baselines, "front": len(pareto.front(pts)),
            "repeats": len(done) - len(trained(done))}


def dominators(baseline: pareto.Point, pts: list[pareto.Point], objectives: list[str]) -> list[int]:
    """Trials of other networks that dominate `baseline`. A sampler may propose the baseline's own
    network again, and its second fine-tune can score a little higher: that is noise, not a better network."""
    b = pareto.losses([baseline.values], objectives)[0]
    return [p.trial for p, loss in zip(pts, pareto.losses([p.values for p in pts], objectives))
            if p.params != baseline.params and (loss <= b).all() and (loss < b).any()]


def trials_to_reach(hv: list[float], target: float) -> int | None:
    return next((k + 1 for k, v in enumerate(hv) if v >= target - 1e-9), None)


def neighbourhood(near: list[dict]) -> list[str]:
    """The lines on the uniform 8-bit baseline's neighbours: can anything near it dominate it?"""
    base, steps = near[0], near[1:]
    kept = [n for n in steps if n["accuracy"] >= base["accuracy"] and n["latency_ms"] < base["latency_ms"]]
    p = base["accuracy"] / 100
    stderr = 100 * (p * (1 - p) / base["val_images"]) ** 0.5
    lines = ["What it takes to dominate the uniform 8-bit baseline: it and each one-step compression of it (one width "
             "a step narrower, or one layer group a step sparser), evaluated exactly as its trial is (same supernet, "
             "fine-tune and seed):", "",
             "| network | val accuracy % | test accuracy % | predicted latency ms |", "|---|---|---|---|"]
    lines += [f"| {n['network']} | {n['accuracy']:.2f} | {n['test_accuracy']:.2f} | {n['latency_ms']:.3f} |" for n in near]
    lines += ["", f"{len(kept)} of the {len(steps)} one-step compressions keep the baseline's validation accuracy "
              f"({base['accuracy']:.2f}%) and are faster; they differ from it by "
              f"{min(n['accuracy'] for n in steps) - base['accuracy']:+.2f} to "
              f"{max(n['accuracy'] for n in steps) - base['accuracy']:+.2f} points. One validation accuracy has a "
              f"standard error of {stderr:.2f} points ({base['val_images']} images)."]
    return lines


def report(results: dict, trials: int, seeds: list[int], plot: Path, minutes: float | None, near: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = {m: [results[m][s]["hypervolume"][-1] for s in seeds] for m in METHODS}
    needs = [trials_to_reach(results["joint"][s]["hypervolume"], results["random"][s]["hypervolume"][-1]) for s in seeds]
    took = f", {minutes:.0f} minutes in all" if minutes is not None else ""
    lines = [f"{len(seeds)} seeds x {trials} networks trained per method ({machine()}{took}); hypervolume "
             "of (validation accuracy, predicted latency) against the fixed reference point `pareto.reference`.", "",
             "| method | final hypervolume (mean) | per seed | front size (mean) | repeats (mean) |",
             "|---|---|---|---|---|"]
    for m in METHODS:
        sizes = np.mean([results[m][s]["front"] for s in seeds])
        repeats = np.mean([results[m][s]["repeats"] for s in seeds])
        lines.append(f"| {m} | {np.mean(final[m]):.1f} | {', '.join(f'{v:.1f}' for v in final[m])} | {sizes:.1f} "
                     f"| {repeats:.1f} |")
    shown = [f"{n}/{trials} ({n / trials:.2f})" if n else f"not within {trials}" for n in needs]
    beats = sum(j > q for j, q in zip(final["joint"], final["sequential"]))
    int8 = [bool(results["joint"][s]["baselines"].get("int8", {}).get("dominated_by")) for s in seeds]
    fractions = [n / trials if n else 1.0 for n in needs]
    lines += ["", f"- Networks the joint search trains to reach random search's final hypervolume, per seed: "
              f"{', '.join(shown)}; {np.mean(fractions):.2f} of the budget on average (goal: at most 1/3 on average "
              "and 1/2 on every seed).",
              f"- Joint beats the sequential pipeline at equal budget on {beats} of {len(seeds)} seeds (goal: every seed).",
              f"- The uniform 8-bit baseline is dominated by another network of the joint search on {sum(int8)} of "
              f"{len(seeds)} seeds (goal: every seed).",
              "- Repeats: trials whose network the study had already evaluated; they are told its result, are not "
              "trained again, and do not count toward the budget: every method trains the same number of networks.",
              "", *neighbourhood(near),
              "", f"![hypervolume against networks trained]({plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot})"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in METHODS:
        curves = np.array([results[m][s]["hypervolume"][:trials] for s in seeds])
        x = np.arange(1, curves.shape[1] + 1)
        ax.plot(x, curves.mean(0), label=m)
        ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2)
    ax.set_xlabel("networks trained")
    ax.set_ylabel("hypervolume")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, 1 seed, 6 networks (the test suite runs this)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--networks", type=int, default=None, help="networks each method trains")
    parser.add_argument("--folder", type=Path, default=ROOT / "outputs" / "bench-search")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-run", action="store_true", help="re-read the studies of the last run, run nothing")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: each study is topped up to its budget (no time is reported)")
    args = parser.parse_args()
    started = time.monotonic()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    trials = args.networks or (6 if args.quick else 30)
    done = args.folder / "results.json"
    if not args.no_run:
        if (args.folder / "mlflow.db").exists() and not args.resume:
            raise SystemExit(f"{args.folder} holds an earlier run: remove it to measure from scratch, or --resume it")
        args.folder.mkdir(parents=True, exist_ok=True)
        with Workers(None, None, 1, 0) as workers:  # one local Ray for every study
            for seed in seeds:
                for method in METHODS:
                    name = f"{method}-s{seed}"
                    if method == "sequential":
                        sequential(args.folder, name, seed, trials, args.quick)
                    else:  # the default sampler against the other conf/sampler options
                        until_trained(compose(args.folder, name, seed, trials, args.quick,
                                              None if method == "joint" else method), trials)
            near = neighbours(args.folder, args.quick, workers)
        minutes = None if args.resume else (time.monotonic() - started) / 60
    else:
        stored = json.loads(done.read_text()) if done.exists() else {}
        minutes, near = stored.get("minutes"), stored.get("neighbours")
        if near is None:  # a run from before the neighbours were evaluated
            with Workers(None, None, 1, 0) as workers:
                near = neighbours(args.folder, args.quick, workers)
    results: dict = {m: {s: curve(args.folder, f"{m}-s{s}", s, trials, args.quick) for s in seeds} for m in METHODS}
    done.write_text(json.dumps({**results, "minutes": minutes, "neighbours": near}, indent=1))
    section = report(results, trials, seeds, (args.folder if args.quick else ROOT / "docs") / "bench-search.png",
                     minutes, near)
    print(section)
    write_readme(section, args.readme, "bench-search")


if __name__ == "__main__":
    main()
