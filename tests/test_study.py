"""The driver: a Hydra sweep as a user runs it (`python -m search -m ...`: a study per job), then its pieces in
this process: the study it opens (constraints, objective names, the config it keeps), a resume with another
config, the supernet's progress streamed from a worker, and a cache shared by studies. A single study end to end,
with its resume, is tests/test_end_to_end.py."""
import re
import subprocess
import warnings
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage

import spaces
from search import data as datasets
from search import latency, objectives, pareto, preflight, storage, supernet
from search import study as driver
from search.config import ConfigError, compose, options, resolve
from search.study_config import StudyConfig
from tests.cli import DIGITS, command


def search(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    return command(folder, "search", *overrides)


@pytest.mark.slow
def test_each_multirun_job_runs_a_study_of_its_own(tmp_path, shared_cache):
    """A sweep over a setting that leaves the supernet alone (a seed sweep trains one per seed): two studies."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = search(tmp_path, "-m", "finetune.steps=4,5", *DIGITS, "ray.num_cpus=2", "n_trials=2",
                  f"tracking.uri={uri}", f"cache_dir={shared_cache}")
    assert done.returncode == 0, done.stderr[-3000:]
    journals = sorted((tmp_path / "outputs").glob("*/optuna.journal"))
    assert len(journals) == 2
    steps = {}
    for journal in journals:
        name = journal.parent.name
        study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
        assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
        steps[name] = study.user_attrs[preflight.CONFIG_ATTR]["finetune.steps"]
        assert (journal.parent / "search.log").exists()  # each job's Hydra log beside its study
    assert sorted(steps.values()) == [4, 5] and all(f"finetune.steps_{n}_" in name for name, n in steps.items())
    experiments = {e.name for e in MlflowClient(uri).search_experiments()}
    assert set(steps) <= experiments
    assert sorted(re.findall(r"^study (\S+): 2 complete trials", done.stdout, re.MULTILINE)) == sorted(steps)


# --- the driver's pieces, in this process -------------------------------------------------------------


def composed(tmp_path: Path, *overrides: str) -> dict:
    return resolve(compose(["data=digits", f"study.dir={tmp_path}/study", f"cache_dir={tmp_path}/cache", *overrides]))


def refuse_changed(cfg: dict) -> None:
    preflight.refuse_changed(StudyConfig.of(cfg))


def digits_space(cfg: dict):
    return spaces.create(**cfg["space"], input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize("sampler", options("sampler"))
def test_budgets_reach_every_sampler_as_trial_constraints(tmp_path, sampler):
    """No FutureWarning (Optuna 5 deprecated `constraints_func`), the constraints stored on each trial
    whatever the sampler, and infeasible trials kept off the front by Optuna and by pareto alike."""
    cfg = composed(tmp_path, f"sampler={sampler}", "budget.size_kb=150")
    space, predictor = digits_space(cfg), latency.for_target(cfg["target"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        study = driver._open(StudyConfig.of(cfg), space)
        for _ in range(12):
            trial = study.ask()
            layers = space.layers(space.sample(trial))
            predicted = objectives.metrics(layers, predictor.predict(layers), cfg["target"]["file"])
            driver.constrain(trial, predicted, cfg["budget"])
            for key, value in predicted.items():
                trial.set_user_attr(key, value)
            accuracy = 90 + predicted["size_kb"] / 100  # bigger is better here: infeasible trials would win
            trial.set_user_attr("accuracy", accuracy)
            study.tell(trial, [accuracy, predicted["latency_ms"]])
    stored = optuna.load_study(study_name=study.study_name, storage=storage.for_study(storage.Location.of(cfg["study"]))).trials
    assert all(t.constraints == {"size_kb": pytest.approx(t.user_attrs["size_kb"] - 150)} for t in stored)
    feasible = {t.number for t in stored if t.user_attrs["size_kb"] <= 150}
    assert feasible and len(feasible) < len(stored)
    assert {t.number for t in study.best_trials} <= feasible
    front = pareto.front(pareto.points(stored, cfg["objectives"]))
    assert front and {p.trial for p in front} <= feasible


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_resumed_study_refuses_a_config_that_changes_what_its_trials_mean(tmp_path, kind):
    where = [f"study.storage=sqlite:///{tmp_path}/optuna.db"] if kind == "sqlite" else []
    cfg = composed(tmp_path, *where)
    study = driver._open(StudyConfig.of(cfg), digits_space(cfg))
    journal = tmp_path / "optuna.db" if where else Path(cfg["study"]["dir"]) / "optuna.journal"
    written = journal.stat().st_size, journal.stat().st_mtime_ns
    reloaded = optuna.load_study(study_name=study.study_name, storage=storage.for_study(storage.Location.of(cfg["study"])))
    assert reloaded.metric_names == ["accuracy", "latency_ms"]  # what optuna-dashboard shows
    assert reloaded.user_attrs[preflight.CONFIG_ATTR]["supernet.epochs"] == cfg["supernet"]["epochs"]

    refuse_changed(cfg)
    refuse_changed(composed(tmp_path, *where, "n_trials=7", "ray.num_cpus=1", "ray.address=auto",
                                      f"tracking.uri=sqlite:///{tmp_path}/elsewhere.db", "pareto.every=3"))
    with pytest.raises(ConfigError, match=r"^seed: study 'mobilenetv2-digits-snapdragon665' was created with "
                                          r"seed=0 \(now 1\)"):
        refuse_changed(composed(tmp_path, *where, "seed=1"))
    with pytest.raises(ConfigError, match=r"^finetune\.lr, supernet\.epochs: "):
        refuse_changed(composed(tmp_path, *where, "supernet.epochs=1", "finetune.lr=0.02"))
    with pytest.raises(ConfigError, match=r"^budget\.size_kb, objectives: "):
        refuse_changed(composed(tmp_path, *where, "objectives=[accuracy,size_kb]", "budget.size_kb=100"))
    assert (journal.stat().st_size, journal.stat().st_mtime_ns) == written  # checking writes nothing


def test_a_study_that_recorded_a_retired_key_still_resumes(tmp_path):
    """Studies made while targets declared `bits` recorded target.bits; the target's file format narrows the space
    now, so the key says nothing space.bits does not: such a study resumes with today's config."""
    cfg = composed(tmp_path)
    study = driver._open(StudyConfig.of(cfg), digits_space(cfg))
    study.set_user_attr(preflight.CONFIG_ATTR, {**study.user_attrs[preflight.CONFIG_ATTR], "target.bits": [5, 6, 7, 8, 32]})
    refuse_changed(cfg)
    with pytest.raises(ConfigError, match=r"^seed: "):  # and a key that still means something is still compared
        refuse_changed(composed(tmp_path, "seed=1"))


@pytest.mark.slow
def test_supernet_training_streams_its_progress_from_the_worker(tmp_path):
    from search.workers import Workers

    data = datasets.load({"name": "digits", "val_size": 0.2, "test_size": 0.2, "limit": 96}, 0, tmp_path)
    space_settings = {**composed(tmp_path)["space"], "input_shape": data.input_shape, "num_classes": 10}
    settings = {"epochs": 2, "batch_size": 32, "lr": 0.1, "random_subnets": 1}
    seen = []
    with Workers(None, 1, 1, 0) as workers:
        trained = workers.stream(supernet.train, space_settings, workers.share(data), settings, 0,
                                 report=seen.append, cpus=1)
    training = [p for p in seen if p.stage == "training"]
    assert [(p.step, p.epoch) for p in training] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert {(p.steps, p.epochs) for p in seen} == {(6, 2)} and seen[-1].stage != "training"
    assert set(trained) == {"state", "teacher", "val_accuracy"} and len(trained["teacher"]) == 96


def test_studies_sharing_a_cache_train_a_supernet_once(tmp_path):
    """Two studies needing the same supernet at once (a parallel sweep, two users of one cache): one trains it,
    the other waits and loads the file."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    trained = []

    def train() -> dict:
        trained.append(1)
        time.sleep(0.5)  # long enough that, without the lock, the second study would also find no file
        return {"state": {"w": np.ones(3, np.float32)}, "teacher": np.zeros((2, 10), np.float32), "val_accuracy": 50.0}

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: supernet.load_or_train("k", tmp_path, train), range(2)))
    assert len(trained) == 1 and sorted(cached for _, cached in results) == [False, True]
    assert all(s.val_accuracy == 50.0 and s.state["w"].tolist() == [1, 1, 1] for s, _ in results)
