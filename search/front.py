"""The study's Pareto front as it is published while the study runs and when it ends: files in the study
folder, the same on the study's MLflow run, and the summary the command prints."""
from __future__ import annotations

import optuna

from . import pareto, plots
from .study_config import StudyConfig
from .tracking import Tracker


def publish(study: optuna.Study, tracker: Tracker, config: StudyConfig, step: int) -> list[pareto.Point]:
    """The front as it stands: files in the study folder (pareto.csv, .html, .png), the same files on the
    study's MLflow run with its size and hypervolume, and each trial run tagged pareto=true|false and its rank."""
    names = config.objectives
    pts = pareto.points(study.trials, names)
    folder = config.where.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "pareto.csv", folder / "pareto.html", folder / "pareto.png"]
    title = f"{study.study_name}: {len(pts)} networks evaluated, {len(pareto.front(pts))} on the front"
    pareto.write_csv(pts, files[0])
    plots.write_html(pts, names, files[1], title)
    plots.write_png(pts, names, files[2], title)
    metrics = {"pareto_size": len(pareto.front(pts)),
               "hypervolume": pareto.hypervolume(pts, names, config.reference)}
    tracker.log_front(pts, files, metrics, step)
    return pts


def summary(pts: list[pareto.Point], config: StudyConfig, experiment_id: str, complete: int, repeats: int) -> None:
    front = sorted(pareto.front(pts), key=lambda p: p.values["latency_ms"])
    name = config.where.name
    print(f"\nstudy {name}: {complete} complete trials ({repeats} repeats of a network already evaluated, "
          f"not trained again), {len(front)} on the Pareto front of {' / '.join(config.objectives)}:")
    print(f"{'trial':>6} {'accuracy %':>10} {'latency ms':>10} {'size KB':>9}  baseline")
    for p in front:
        v = p.values
        print(f"{p.trial:>6} {v['accuracy']:>10.2f} {v['latency_ms']:>10.2f} {v['size_kb']:>9.1f}  {p.baseline}")
    print(f"front: {config.where.folder}/pareto.html (and on the study's MLflow run)")
    print(f"browse: {runs_link(config.tracking_uri, experiment_id)}")
    print(f"promote: python -m search.promote study.name={name} pick=knee")


def runs_link(uri: str, experiment_id: str) -> str:
    """Where the study's runs table is. MLflow 3's UI opens an experiment on its GenAI overview; the
    `/runs` page is the table (for a local store, at the address `mlflow ui` serves by default)."""
    page = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/{page}"
