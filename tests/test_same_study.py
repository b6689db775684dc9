"""scripts/same_study.py, the before/after check of a change meant to leave the search alone: two studies that
differ in one trial's metric, or in a param, are told apart, naming the trial; the seconds a trial took are not a
difference."""
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution

from search import storage

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "same_study.py"


def study(folder: Path, accuracy: float = 90.0, width: float = 0.5, seconds: float = 1.0) -> Path:
    folder = folder / "s"
    made = optuna.create_study(study_name="s", storage=storage.journal(folder), directions=["maximize", "minimize"])
    made.set_metric_names(["accuracy", "latency_ms"])
    for n, (acc, ms) in enumerate([(91.0, 2.0), (accuracy, 1.0)]):
        made.add_trial(optuna.trial.create_trial(
            params={"width.s0": width if n else 1.0}, distributions={"width.s0": CategoricalDistribution([0.5, 1.0])},
            values=[acc, ms], user_attrs={"accuracy": acc, "latency_ms": ms, "evaluate_s": seconds + n}))
    return folder


def compare(before: Path, after: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(before), str(after)], capture_output=True, text=True,
                          timeout=120)


def test_the_same_study_is_the_same_whatever_it_took(tmp_path):
    done = compare(study(tmp_path / "a"), study(tmp_path / "b", seconds=7.0))
    assert done.returncode == 0 and "the same study: 2 trials" in done.stdout, done.stderr


def test_a_changed_metric_or_param_is_named(tmp_path):
    before = study(tmp_path / "a")
    done = compare(before, study(tmp_path / "b", accuracy=90.5))
    assert done.returncode == 1 and "trial 1: values [90.0, 1.0] -> [90.5, 1.0]" in done.stdout
    assert "trial 1: attrs differ at accuracy" in done.stdout
    done = compare(before, study(tmp_path / "c", width=1.0))
    assert done.returncode == 1 and "trial 1: params differ at width.s0" in done.stdout
