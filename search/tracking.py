"""MLflow, from the driver only: one experiment per study, one parent run for the study and one
child run per trial, found again when a study resumes."""
from __future__ import annotations

import json
import time
from typing import Any, Iterable, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

STUDY_TAG = "search.study"
ROLE_TAG = "search.role"
BATCH = 100  # MLflow accepts at most 100 params or tags per request


def _chunks(items: list, size: int = BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


class Tracker:
    def __init__(self, uri: str, study: str):
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(study)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(study)
        self.study = study
        self.parent_id = self._find_parent() or ""

    def _find_parent(self) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
        return runs[0].info.run_id if runs else None

    def start_study(self, config: Mapping[str, Any], overrides: list[str], config_yaml: str, tags: Mapping[str, str]) -> None:
        """Create the parent run (config as params) or reopen it when the study resumes."""
        if not self.parent_id:
            run = self.client.create_run(self.experiment_id, run_name=self.study,
                                         tags={ROLE_TAG: "study", STUDY_TAG: self.study, **tags})
            self.parent_id = run.info.run_id
            self._log(self.parent_id, params=_flatten(config))
        else:
            self.client.update_run(self.parent_id, status="RUNNING")
        self._log(self.parent_id, tags={"search.overrides": " ".join(overrides) or "(defaults)"})
        self.client.log_text(self.parent_id, config_yaml, "config.yaml")

    def start_trial(self, number: int, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags={
            "mlflow.parentRunId": self.parent_id, STUDY_TAG: self.study, ROLE_TAG: "trial",
            "trial": str(number), "trial_state": "RUNNING", **tags})
        self._log(run.info.run_id, params={k: str(v) for k, v in params.items()})
        return run.info.run_id

    def end_trial(self, run_id: str, state: str, metrics: Mapping[str, float], tags: Mapping[str, str] = {}) -> None:
        """state is Optuna's (COMPLETE, FAIL); the run ends FINISHED or FAILED to match."""
        self._log(run_id, metrics=metrics, tags={"trial_state": state, **tags})
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if state == "COMPLETE" else RunStatus.FAILED))

    def end_study(self, metrics: Mapping[str, float], status: str = "FINISHED") -> None:
        self._log(self.parent_id, metrics=metrics)
        self.client.set_terminated(self.parent_id, status)

    def log_study(self, metrics: Mapping[str, float] = {}, tags: Mapping[str, str] = {}) -> None:
        self._log(self.parent_id, metrics=metrics, tags=tags)

    def _log(self, run_id: str, params: Mapping[str, str] = {}, metrics: Mapping[str, float] = {},
             tags: Mapping[str, str] = {}) -> None:
        now = int(time.time() * 1000)
        for chunk in _chunks([Param(k, v) for k, v in params.items()]):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()]):
            self.client.log_batch(run_id, tags=chunk)
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
