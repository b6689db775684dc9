"""MLflow: one experiment per study, one parent run for the study and one child run per trial,
found again when a study resumes; the front on them; and the registry entries promote makes."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, cast

import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from . import locks
from .errors import UserError
from .pareto import Point

# MLflow gives its logger a console handler of its own when imported ("Creating initial MLflow database
# tables ..." at INFO); its records go to the command's logging instead: the console shows warnings,
# the run folder's log file everything.
logging.getLogger("mlflow").handlers.clear()
logging.getLogger("mlflow").propagate = True
# Downloads are one small artifact each (a config, a trial's weights): no progress bars on the console.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

STUDY_TAG = "search.study"
ROLE_TAG = "search.role"
WEIGHTS = "weights.npz"  # a trial run's fine-tuned weights: what promote exports
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


def client(uri: str) -> MlflowClient:
    """An MLflow client on `uri`. Opening a new SQLite store creates (migrates) its tables: that happens under a
    file lock, so commands started at once against one store (two studies, a calibration) do not race."""
    with locks.sqlite_setup(uri):
        return MlflowClient(tracking_uri=uri)


class Tracker:
    def __init__(self, uri: str, study: str, create: bool = True):
        self.client = client(uri)
        experiment = self.client.get_experiment_by_name(study)
        if experiment is None and not create:
            raise UserError(f"study.name: no MLflow experiment {study!r} at tracking.uri {uri}")
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            study, tags={"mlflow.experimentKind": "custom_model_development"})  # the UI opens on its runs table
        self.study = study
        self.parent_id = self._find_parent() or ""

    def _find_parent(self) -> str | None:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{ROLE_TAG}` = 'study'", max_results=1)
        return runs[0].info.run_id if runs else None

    def trial_runs(self) -> dict[int, Run]:
        """Trial number -> its run (the newest, should a trial number ever have two)."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'",
                                           max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
            runs += page
            token = page.token
            if not token:
                return {int(r.data.tags["trial"]): r for r in runs}

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
        """state: COMPLETE or FAIL (Optuna's), or KILLED (FAIL in Optuna: the driver stopped it); the run
        ends FINISHED, FAILED or KILLED to match."""
        self._log(run_id, metrics=metrics, tags={"trial_state": "FAIL" if state == "KILLED" else state, **tags})
        self.client.set_terminated(run_id, {"COMPLETE": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}[state])

    def study_config(self) -> dict[str, Any]:
        """The resolved config the study ran with (its run's config.yaml)."""
        if not self.parent_id:
            raise UserError(f"study.name: experiment {self.study!r} has no study run")
        with tempfile.TemporaryDirectory() as tmp:
            return yaml.safe_load(Path(self.client.download_artifacts(self.parent_id, "config.yaml", tmp)).read_text())

    def weights(self, run_id: str) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, WEIGHTS, tmp)
            except Exception as e:  # MLflow raises its own types per artifact store
                raise UserError(f"run {run_id}: no {WEIGHTS} artifact ({type(e).__name__}); trials store their "
                                "weights since promote exists: run the study again to add trials that can be promoted")
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}

    def registered(self, model: str, study: str, trial: int) -> ModelVersion | None:
        """The version of `model` already made from this study's trial, if any."""
        try:
            versions = self.client.search_model_versions(f"name = '{model}'")
        except MlflowException:
            return None
        return next((v for v in versions if v.tags.get(STUDY_TAG) == study and v.tags.get("trial") == str(trial)), None)

    def set_alias(self, model: str, version: str, alias: str) -> None:
        self.client.set_registered_model_alias(model, alias, version)

    def register(self, run_id: str, path: Path, example: np.ndarray, output: np.ndarray, promotion: Any,
                 tags: Mapping[str, str]) -> str:
        """Log the ONNX file at `path` as the trial run's model (signature and input example included), register it
        as a new version of `promotion.model_name` with everything a reviewer needs as tags, alias it. Every other
        file goes with the run as `<backend>/<name>` (the version's `file.<backend>` tag: its URI, or why the trial
        has none); `promotion` (a `search.promotion.Promotion`) is kept whole as the `promotion` tag."""
        import mlflow
        import onnx
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.client.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.onnx.log_model(onnx.load(str(path)), name="model", signature=infer_signature(example, output),
                                         input_example=example, save_as_external_data=False,
                                         onnx_execution_providers=["CPUExecutionProvider"])
        version_tags = {STUDY_TAG: promotion.study, "study": promotion.study, "trial": str(promotion.trial),
                        "run_id": run_id, "run_link": f"#/experiments/{self.experiment_id}/runs/{run_id}",
                        **{k: f"{getattr(promotion, k):.4f}" for k in ("test_accuracy", "predicted_latency_ms",
                                                                      "size_kb")},
                        **tags, "promotion": json.dumps({k: v for k, v in promotion.to_json().items()
                                                         if k != "version"})}
        for file in promotion.files:
            if file.path is None:
                version_tags[f"file.{file.backend}"] = f"none: {file.refused}"
                continue
            if Path(file.path) == Path(path):  # the version's model
                version_tags[f"file.{file.backend}"] = f"runs:/{run_id}/model"
            else:
                self.client.log_artifact(run_id, file.path, file.backend)
                version_tags[f"file.{file.backend}"] = f"runs:/{run_id}/{file.backend}/{Path(file.path).name}"
            version_tags |= {f"{file.backend}.{k}": f"{getattr(file, k):.4f}" for k in
                             ("test_accuracy", "agreement", "kb", "host_latency_ms", "host_latency_iqr_ms")
                             if getattr(file, k) is not None}
        if promotion.phone:  # measured on a phone
            version_tags |= {f"phone.{k}": v if isinstance(v, str) else f"{v:.4f}"
                             for k, v in asdict(promotion.phone).items() if v is not None}
        version = mlflow.register_model(info.model_uri, promotion.model_name, tags=version_tags).version
        self.set_alias(promotion.model_name, version, promotion.alias)
        self._log(run_id, metrics={f"promote.{f.backend}.{k}": getattr(f, k) for f in promotion.files
                                   for k in ("test_accuracy", "host_latency_ms", "kb") if getattr(f, k) is not None},
                  tags={"promoted": f"{promotion.model_name}/{version}"})
        return str(version)

    def log_weights(self, run_id: str, weights: Mapping[str, np.ndarray]) -> None:
        """The trial's fine-tuned state as an npz artifact (arrays only: loading it runs no code)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / WEIGHTS
            np.savez_compressed(path, **cast(dict[str, Any], weights))  # numpy's stub types any keyword as allow_pickle
            self.client.log_artifact(run_id, str(path))

    def log_front(self, pts: Sequence[Point], files: Sequence[Path], metrics: Mapping[str, float], step: int) -> None:
        """Tag each complete trial's run with its front membership and rank (only where that changed),
        and put the front's files and metrics on the study's run."""
        runs = self.trial_runs()
        for p in pts:
            run = runs.get(p.trial)
            if run is None:
                continue
            want = {"pareto": str(p.pareto).lower(), "pareto.rank": str(p.rank)}
            changed = {k: v for k, v in want.items() if run.data.tags.get(k) != v}
            if changed:
                self._log(run.info.run_id, tags=changed)
        for f in files:
            self.client.log_artifact(self.parent_id, str(f), "pareto")
        self._log(self.parent_id, metrics=metrics, step=step)  # step: complete trials, so the UI charts progress

    def end_study(self, metrics: Mapping[str, float], status: str = "FINISHED") -> None:
        self._log(self.parent_id, metrics=metrics)
        self.client.set_terminated(self.parent_id, status)

    def log_study(self, metrics: Mapping[str, float] = {}, tags: Mapping[str, str] = {}) -> None:
        self._log(self.parent_id, metrics=metrics, tags=tags)

    def _log(self, run_id: str, params: Mapping[str, str] = {}, metrics: Mapping[str, float] = {},
             tags: Mapping[str, str] = {}, step: int = 0) -> None:
        now = int(time.time() * 1000)
        for chunk in _chunks([Param(k, v) for k, v in params.items()]):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks([RunTag(k, str(v)) for k, v in tags.items()]):
            self.client.log_batch(run_id, tags=chunk)
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
