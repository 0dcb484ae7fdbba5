"""The tracking server goes away (issue 14, item 3): training goes on, says so once, and the run's metrics
are complete once the server is back; what could not be sent is recorded, never a failed run.

    pytest -m reliability tests/test_reliability_tracking.py

The end-to-end test trains against a real `mlflow server` (SQLite store in tmp_path, on a free loopback
port) that is stopped after step 2 and started again at step 5; MLflow's own HTTP retries are cut short
(MLFLOW_HTTP_REQUEST_MAX_RETRIES=1) so a refused connection fails in milliseconds, not minutes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from tuneforge import tracking
from tuneforge.recipes import load_recipe
from tuneforge.tracking import ExperimentTracker
from tuneforge.train.trainer import LoRATrainer
from tuneforge.train.workflow import run_training

pytestmark = pytest.mark.reliability
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on loopback with a SQLite store, started and stopped as a process group."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey workers to reap
        command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the process writes to it)
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"mlflow server did not start in {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def short_http_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setattr(tracking, "FIRST_RETRY", 0.2)
    monkeypatch.setattr(tracking, "MAX_RETRY", 1.0)


class Outage(TrainerCallback):
    """Stops the server after step `down`, starts it again after step `up`, and at the end waits (a few
    seconds at most) for the tracker to have caught up by itself, before end_run flushes."""

    def __init__(self, server: MlflowServer, down: int, up: int, caught_up):
        self.server, self.down, self.up, self.caught_up = server, down, up, caught_up
        self.resumed_in_run = False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.down:
            self.server.stop()
        elif state.global_step == self.up:
            self.server.start()

    def on_train_end(self, args, state, control, **kwargs):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.caught_up():
            time.sleep(0.1)
        self.resumed_in_run = self.caught_up()


def test_training_outlives_a_tracking_server_outage_and_the_run_is_complete(
    tiny_model_dir, small_data_file, tmp_path, server, short_http_retries, monkeypatch, caplog
):
    recipe = load_recipe(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train_file={small_data_file}",
            "data.max_seq_length=64",
            "data.validation_fraction=0.25",
            f"training.output_dir={tmp_path / 'run'}",
            "training.max_steps=8",
            "training.per_device_train_batch_size=2",
            "training.logging_steps=1",
            "training.save_strategy=steps",
            "training.save_steps=4",  # checkpoint-4 is uploaded while the server is down
            "training.eval_strategy=no",
            "training.learning_rate=1e-2",
            f"tracking.tracking_uri={server.url}",
        ],
    )
    buffered = []
    original_buffered = ExperimentTracker.buffered
    monkeypatch.setattr(
        ExperimentTracker,
        "buffered",
        lambda self, folder=None: buffered.append(original_buffered(self, folder)) or buffered[-1],
    )
    outage = Outage(server, down=2, up=5, caught_up=lambda: bool(buffered and buffered[0].outages))
    original_train = LoRATrainer.train
    monkeypatch.setattr(
        LoRATrainer, "train", lambda self, *a, **kw: original_train(self, *a, **kw, callbacks=[outage])
    )
    caplog.set_level(logging.INFO)

    outcome = run_training(recipe)

    assert outcome.global_step == 8  # training went on
    client = MlflowClient(server.url)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    for metric in ("loss", "learning_rate", "grad_norm"):  # every step, the outage's included
        assert [m.step for m in client.get_metric_history(outcome.run_id, metric)] == list(range(1, 9)), (
            metric
        )
    assert {"final/train_loss", "peak_memory_gb"} <= set(run.data.metrics)
    assert "unreachable for" in run.data.tags["tracking_outage"] and "tracking_gap" not in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/checkpoint-4", "checkpoints/checkpoint-8"}
    assert {a.path for a in client.list_artifacts(outcome.run_id, "adapter")} >= {
        "adapter/adapter_model.safetensors"
    }
    assert outage.resumed_in_run  # sent while training, after the server came back, not only at the end
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = [r.getMessage() for r in warnings if "unreachable" in r.getMessage()]
    assert len(said) == 1 and server.url in said[0], said  # said once, not once per step
    assert not [r for r in warnings if r.name.startswith(("urllib3", "mlflow"))], [
        r.getMessage() for r in warnings
    ]


class Flaky:
    """An MlflowClient whose log_batch fails while `down` is set, as when the server is away."""

    def __init__(self, client):
        self.client, self.down = client, True

    def __getattr__(self, name):
        return getattr(self.client, name)

    def log_batch(self, *a, **kw):
        if self.down:
            from mlflow.exceptions import MlflowException

            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/log-batch failed")
        return self.client.log_batch(*a, **kw)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the tests below (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def test_a_full_buffer_drops_the_oldest_metrics_and_records_the_gap(
    sqlite_uri, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(tracking, "MAX_PENDING", 6)  # 10 steps and a final metric: 5 too many
    monkeypatch.setattr(tracking, "FIRST_RETRY", 30.0)  # the sender waits out the loop below in backoff
    uri = sqlite_uri
    tracker = ExperimentTracker(uri)
    run_id = tracker.start_run("exp", {"a": 1})
    flaky = tracker.client = Flaky(tracker.client)
    buffered = tracker.buffered(tmp_path)
    buffered.log_metrics({"loss": 1.0}, step=1)
    deadline = time.monotonic() + 10
    while buffered._down_since is None and time.monotonic() < deadline:  # its first attempt failed
        time.sleep(0.01)
    for step in range(2, 11):
        buffered.log_metrics({"loss": 1.0 / step}, step=step)
    flaky.down = False
    buffered.end_run({"train_loss": 0.5}, step=10, timeout=30)  # wakes the sender: no 30 s wait

    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [6, 7, 8, 9, 10]  # the newest 5
    run = client.get_run(run_id)
    assert run.data.tags["tracking_gap"] == "5 metric values of steps 1-5"
    assert run.info.status == "FINISHED" and run.data.metrics["final/train_loss"] == 0.5
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


def test_a_server_that_never_comes_back_costs_a_bounded_wait_and_leaves_the_metrics_on_disk(
    sqlite_uri, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(tracking, "FIRST_RETRY", 0.05)
    uri = sqlite_uri
    tracker = ExperimentTracker(uri)
    run_id = tracker.start_run("exp", {})
    tracker.client = Flaky(tracker.client)
    buffered = tracker.buffered(tmp_path)
    for step in (1, 2, 3):
        buffered.log_metrics({"loss": float(step)}, step=step)
    started = time.monotonic()
    buffered.end_run({"train_loss": 2.0}, step=3, timeout=1.0)  # never raises
    assert time.monotonic() - started < 5
    unsent = [json.loads(line) for line in (tmp_path / tracking.UNSENT_FILE).read_text().splitlines()]
    assert [(u["key"], u["step"]) for u in unsent] == [
        ("loss", 1),
        ("loss", 2),
        ("loss", 3),
        ("final/train_loss", 3),
    ]
    assert all(u["run_id"] == run_id for u in unsent)
    last = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING][-1]
    assert (
        "still unreachable" in last
        and "4 metric values of steps 1-3" in last
        and tracking.UNSENT_FILE in last
    )
    buffered.log_metrics({"loss": 9.0}, step=9)  # after giving up: dropped and counted, still no error
    assert buffered.gap.metrics == 5


class Refusing(Flaky):
    """An MlflowClient whose server refuses (400) the metrics of one step."""

    def __init__(self, client, step):
        super().__init__(client)
        self.down, self.step = False, step

    def log_batch(self, run_id, metrics=(), **kw):
        if any(m.step == self.step for m in metrics):
            from mlflow.exceptions import RestException

            raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "no such thing"})
        return self.client.log_batch(run_id, metrics=metrics, **kw)


def test_a_call_the_server_refuses_is_dropped_said_once_and_recorded(sqlite_uri, tmp_path, caplog):
    tracker = ExperimentTracker(sqlite_uri)
    run_id = tracker.start_run("exp", {})
    tracker.client = Refusing(tracker.client, step=2)
    buffered = tracker.buffered(tmp_path)
    for step in (1, 2, 3):
        buffered.log_metrics({"loss": float(step), "lr": 0.1}, step=step)
    buffered.log_metrics({"loss": 2.5}, step=2)
    buffered.end_run(timeout=30)
    client = MlflowClient(sqlite_uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 3]  # not retried forever
    assert client.get_run(run_id).data.tags["tracking_gap"] == "3 metric values of step 2"
    assert (
        len([r for r in caplog.records if r.levelno >= logging.WARNING and "refused" in r.getMessage()]) == 1
    )


def test_a_store_whose_creation_dies_midway_leaves_nothing_a_later_run_cannot_open(tmp_path, monkeypatch):
    """MLflow builds a new SQLite store through dozens of migrations; a run killed among them once left a
    half-built mlflow.db that every later run failed on ("_alembic_tmp_experiment_tags already exists"). The
    store is now built under another name and renamed when whole."""
    import mlflow.store.db.utils as db_utils

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    real_upgrade = db_utils._upgrade_db

    def killed_midway(engine):  # the initial tables exist, the migrations have not run
        raise KeyboardInterrupt("killed during the migrations")

    monkeypatch.setattr(db_utils, "_upgrade_db", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ExperimentTracker(uri)
    assert not (tmp_path / "store" / "mlflow.db").exists()  # no half-built store under the real name

    monkeypatch.setattr(db_utils, "_upgrade_db", real_upgrade)
    tracker = ExperimentTracker(uri)
    run_id = tracker.start_run("resumed", {"after": "a kill"})
    tracker.log_metrics({"loss": 0.5}, step=1)
    tracker.end_run()
    stored = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert stored.data.metrics["loss"] == 0.5 and stored.info.status == "FINISHED"
    # only the killed attempt's own file is left beside the store (a small orphan, never opened again)
    leftovers = [p.name for p in (tmp_path / "store").iterdir() if p.name != "mlflow.db"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".creating")
