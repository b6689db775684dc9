"""End to end, as a user runs it: `python -m search` in a fresh folder, then MLflow and Optuna
are read back. Starts a real local Ray with 2 CPUs (2 parallel trials)."""
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage

from tests.cli import DIGITS, command

STUDY = "e2e"
FAST = [*DIGITS, "finetune.steps=5", "ray.num_cpus=2", f"study.name={STUDY}"]
METRICS = {"accuracy", "test_accuracy", "evaluate_s", "latency_ms", "size_kb", "peak_memory_kb", "macs", "params"}


def search(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    return command(folder, "search", *overrides)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_cache):
    folder = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    first = search(folder, *FAST, "n_trials=4", f"tracking.uri={uri}", f"cache_dir={shared_cache}")
    assert first.returncode == 0, first.stderr[-3000:]
    return folder, uri, first


def children(client: MlflowClient, folder_uri: str):
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("search.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("search.role") == "trial"]
    return parents, trials


def test_study_logs_one_parent_and_one_child_run_per_trial(finished):
    folder, uri, _ = finished
    parents, trials = children(MlflowClient(uri), uri)
    assert len(parents) == 1 and len(trials) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["n_trials"] == "4" and parent.data.params["data.name"] == "digits"
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert METRICS <= set(run.data.metrics)
        assert 0 <= run.data.metrics["accuracy"] <= 100 and run.data.metrics["latency_ms"] > 0
        assert {"trial", "trial_state", "target", "space", "latency.predictor", "latency.source"} <= set(run.data.tags)
        assert run.data.tags["target"] == "snapdragon665" and run.data.tags["trial_state"] == "COMPLETE"
        assert any(k.startswith("bits.") for k in run.data.params)
        assert any(k.startswith("sparsity.") for k in run.data.params)
        assert any(k.startswith("width.") for k in run.data.params)
    baselines = {r.data.tags["baseline"]: r for r in trials if r.data.tags["baseline"]}
    assert set(baselines) == {"float", "int8"}
    ratio = baselines["float"].data.metrics["size_kb"] / baselines["int8"].data.metrics["size_kb"]
    assert 3.2 < ratio < 4  # weights 4x smaller; 32-bit biases unchanged, per-channel scales added
    assert {r.data.tags["trial"] for r in trials} == {"0", "1", "2", "3"}


def test_optuna_study_agrees_with_mlflow(finished):
    folder, uri, _ = finished
    storage = JournalStorage(JournalFileBackend(str(folder / "outputs" / STUDY / "optuna.journal")))
    study = optuna.load_study(study_name=STUDY, storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4 and len(study.directions) == 2
    assert [t.user_attrs.get("baseline") for t in complete[:2]] == ["float", "int8"]
    _, runs = children(MlflowClient(uri), uri)
    by_number = {int(r.data.tags["trial"]): r for r in runs}
    for t in complete:
        assert by_number[t.number].data.metrics["accuracy"] == pytest.approx(t.values[0])
        assert by_number[t.number].data.metrics["latency_ms"] == pytest.approx(t.values[1])


def test_prints_progress_and_a_summary(finished):
    _, _, first = finished
    assert "supernet" in first.stdout and "Pareto front" in first.stdout and "mlflow ui" in first.stdout
    assert "4/4" in first.stderr  # the progress bar's last state


def test_rerun_resumes_the_study_and_reuses_the_supernet(finished, shared_cache):
    folder, uri, _ = finished
    again = search(folder, *FAST, "n_trials=6", f"tracking.uri={uri}", f"cache_dir={shared_cache}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "from cache" in again.stdout
    parents, trials = children(MlflowClient(uri), uri)
    assert len(parents) == 1 and len(trials) == 6
    assert sorted(int(r.data.tags["trial"]) for r in trials) == list(range(6))


def test_nothing_is_written_to_the_home_folder(finished):
    folder, _, _ = finished
    assert list((folder / "home").iterdir()) == []
