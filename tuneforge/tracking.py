"""Tracking every stage shares: runs, parameters, metrics and artifacts in MLflow.

The default store is a SQLite database in the working folder; look at it with

    mlflow ui --backend-store-uri sqlite:///mlflow.db

Any tracking URI works too (`tracking.tracking_uri` in the recipe, or $MLFLOW_TRACKING_URI), including an
`mlflow server`. The tracker uses an explicit MlflowClient and run id, never the global active run, so a
resumed training continues the same run. A run folder records its run in mlflow_run.json, so later
stages (eval, bench, cost) add to the same run with `attach(run_folder)`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"  # the MLflow run of a run folder: a resume and later stages continue it
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value's length
BATCH = 100  # MLflow accepts at most 100 params (1000 metrics) per batch call


def default_tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class ExperimentTracker:
    def __init__(self, tracking_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = default_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id: str | None = None

    @classmethod
    def for_run(cls, run_id: str, tracking_uri: str | None = None) -> ExperimentTracker:
        """A tracker that adds to an existing run."""
        tracker = cls(tracking_uri)
        tracker.client.get_run(run_id)  # fails now, naming the run, if it does not exist
        tracker.run_id = run_id
        return tracker

    def record(self, run_folder: str | Path) -> None:
        """Write the run's id and store to the run folder, for `attach` and for a resume."""
        path = Path(run_folder) / RUN_FILE
        path.write_text(json.dumps({"run_id": self._run(), "tracking_uri": self.tracking_uri}) + "\n")

    def start_run(
        self,
        experiment_name: str,
        params: dict[str, Any],
        run_name: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Start a run (or continue `run_id`) and log `params`; returns the run id."""
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
        else:
            experiment = self.client.get_experiment_by_name(experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(experiment_name)
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            self.log_params(params)
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self._run(), params=items[i : i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _is_number(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self._run(), metrics=items[i : i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self._run(), k, str(v))

    def log_model(
        self, model_path: str | Path, run_id: str | None = None, artifact_path: str = "adapter"
    ) -> None:
        """Upload a checkpoint or adapter folder as an artifact of the run."""
        self.client.log_artifacts(run_id or self._run(), str(model_path), artifact_path)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self._run(), str(path), artifact_path)

    def end_run(
        self, final_metrics: dict[str, float] | None = None, status: str = "FINISHED", step: int = 0
    ) -> None:
        """Log final metrics under `final/` and close the run (FINISHED, FAILED or KILLED)."""
        if self.run_id is None:
            return
        if final_metrics:
            self.log_metrics({f"final/{k}": v for k, v in final_metrics.items()}, step)
        self.client.set_terminated(self.run_id, status=status)

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("ExperimentTracker: start_run first")
        return self.run_id


def recorded_run_id(run_folder: str | Path) -> str | None:
    """The MLflow run a run folder recorded, if any."""
    path = Path(run_folder) / RUN_FILE
    return json.loads(path.read_text()).get("run_id") if path.is_file() else None


def attach(run_folder: str | Path) -> ExperimentTracker | None:
    """A tracker for the run a run folder recorded (mlflow_run.json), or None when it recorded none."""
    path = Path(run_folder) / RUN_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return ExperimentTracker.for_run(info["run_id"], info.get("tracking_uri"))


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
