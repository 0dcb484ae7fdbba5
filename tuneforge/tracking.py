"""Tracking every stage shares: runs, parameters, metrics and artifacts in MLflow.

The default store is a SQLite database in the working folder; look at it with

    mlflow ui --backend-store-uri sqlite:///mlflow.db

Any tracking URI works too (`tracking.tracking_uri` in the recipe, or $MLFLOW_TRACKING_URI), including an
`mlflow server`. The tracker uses an explicit MlflowClient and run id, never the global active run, so a
resumed training continues the same run. A run folder records its run in mlflow_run.json, so later
stages (eval, bench, cost) add to the same run with `attach(run_folder)`.

Training logs through a BufferedTracker: a tracking server that goes away mid-run never stops or slows
the training; what it missed is sent when it is back, and what was lost is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"  # the MLflow run of a run folder: a resume and later stages continue it
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value's length
BATCH = 100  # MLflow accepts at most 100 params (1000 metrics) per batch call


def default_tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def create_sqlite_store_whole(uri: str) -> None:
    """A new SQLite store is built under a temporary name, then renamed into place. MLflow creates its tables
    through dozens of migrations; a run killed among them left a file no later run could open ("table
    _alembic_tmp_experiment_tags already exists"), so a resume failed. Other stores are left to MLflow."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.name or path.name == ":memory:" or path.exists():
        return
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.creating")  # a new name: MLflow caches stores
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}")
    client.search_experiments(max_results=1)  # creates the tables and the Default experiment
    engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None), "engine", None)
    if engine is not None:
        engine.dispose()
    if not path.exists():  # another process may have made it meanwhile: keep the first
        os.replace(tmp, path)
    tmp.unlink(missing_ok=True)


class ExperimentTracker:
    def __init__(self, tracking_uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = default_tracking_uri(tracking_uri)
        create_sqlite_store_whole(self.tracking_uri)
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

    def buffered(self, run_folder: str | Path | None = None) -> BufferedTracker:
        """This tracker behind a background sender that outlives tracking-server outages (training)."""
        return BufferedTracker(self, run_folder)

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


# ---------------------------------------------------------------- surviving a tracking outage

MAX_PENDING = 100_000  # metric values kept while the server is away; the oldest go first past this
FLUSH_TIMEOUT = 60.0  # seconds end_run waits for the buffer to drain
FIRST_RETRY, MAX_RETRY = 1.0, 30.0  # backoff between attempts while the server is away (doubling)
UNSENT_FILE = "tracking_unsent.jsonl"  # in the run folder: what could not be sent before giving up


@dataclass
class _Call:
    """One queued tracker call: `kind` is metrics, params, tags, artifact, artifacts or terminate."""

    kind: str
    args: tuple
    metrics: int = 0  # metric values it carries (the buffer's bound counts these)


@dataclass
class _Gap:
    """What never reached the server: counts, step range, and why."""

    metrics: int = 0
    steps: list[int] = field(default_factory=list)  # [first, last]
    other: list[str] = field(default_factory=list)  # params, tags, artifacts

    def add_metrics(self, metrics: list) -> None:
        self.metrics += len(metrics)
        steps = [m.step for m in metrics]
        if steps:
            self.steps = [min([*self.steps, *steps]), max([*self.steps, *steps])]

    def describe(self) -> str:
        parts = []
        if self.metrics:
            first, last = self.steps
            steps = f"step {first}" if first == last else f"steps {first}-{last}"
            parts.append(f"{self.metrics} metric value{'s' if self.metrics > 1 else ''} of {steps}")
        parts += self.other
        return "; ".join(parts)


class BufferedTracker:
    """An ExperimentTracker whose calls never fail and never wait on the network: they are queued and
    sent in order by one background thread.

    While the tracking server is unreachable the thread keeps the queue (at most MAX_PENDING metric
    values; past that the oldest are dropped), warns once per outage, and retries with backoff
    (FIRST_RETRY doubling up to MAX_RETRY seconds). When the server is back it sends what it missed with
    the original steps and timestamps, and tags the run `tracking_outage`. A call the server refuses
    (a 4xx answer: retrying cannot help) is dropped. `end_run` waits up to FLUSH_TIMEOUT seconds for the
    queue to drain; anything lost is tagged `tracking_gap` on the run when the server can still be
    reached, and whatever is left unsent is written to <run folder>/tracking_unsent.jsonl.
    """

    def __init__(self, tracker: ExperimentTracker, run_folder: str | Path | None = None):
        self.tracker = tracker
        self.run_id = tracker._run()
        self.tracking_uri = tracker.tracking_uri
        self.run_folder = Path(run_folder) if run_folder is not None else None
        self.gap = _Gap()
        self.outages: list[str] = []  # one line per outage, for the tracking_outage tag
        self._queue: deque[_Call] = deque()
        self._inflight: _Call | None = None  # the call being sent: never dropped under it
        self._pending_metrics = 0
        self._lock = threading.Condition()
        self._wake = threading.Event()  # cuts a backoff wait short (end_run)
        self._closing = False
        self._abandoned = False
        self._down_since: float | None = None
        self._held_back = 0  # metric values queued during the current outage
        self._refusals = 0  # calls the server answered with a 4xx: the first is a warning, the rest debug
        self._quiet = _QuietRetries()
        self._quiet.attach()
        self._thread = threading.Thread(target=self._send_all, name="tuneforge-tracking", daemon=True)
        self._thread.start()

    # the ExperimentTracker calls training makes

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if _is_number(v)]
        if items:
            self._put(_Call("metrics", (items,), len(items)))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._put(_Call("params", ([Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()],)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._put(_Call("tags", ({k: str(v) for k, v in tags.items()},)))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put(_Call("artifact", (str(path), artifact_path)))

    def log_model(
        self, model_path: str | Path, run_id: str | None = None, artifact_path: str = "adapter"
    ) -> None:
        self._put(_Call("artifacts", (str(model_path), artifact_path)))

    def record(self, run_folder: str | Path) -> None:
        self.tracker.record(run_folder)

    def end_run(
        self,
        final_metrics: dict[str, float] | None = None,
        status: str = "FINISHED",
        step: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Log final metrics under `final/`, send everything queued (waiting up to `timeout`, default
        FLUSH_TIMEOUT, seconds), record any gap and close the run. Never raises."""
        if final_metrics:
            self.log_metrics({f"final/{k}": v for k, v in final_metrics.items()}, step)
        self._put(_Call("terminate", (status,)))
        timeout = FLUSH_TIMEOUT if timeout is None else timeout
        with self._lock:
            self._closing = True
            waiting = self._down_since is not None and bool(self._queue)
            self._lock.notify_all()
        self._wake.set()
        if waiting:
            log.info(
                "waiting up to %.0f s for the tracking server %s to take %d buffered metric values",
                timeout,
                self.tracking_uri,
                self._pending_metrics,
            )
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return
        with self._lock:
            self._abandoned = True
            left = list(self._queue)
            self._queue.clear()
            for call in left:
                self._lose(call, "not sent")
        where = self._write_unsent(left)
        log.warning(
            "tracking server %s still unreachable after %.0f s: %s not recorded in MLflow run %s%s",
            self.tracking_uri,
            timeout,
            self.gap.describe() or "nothing",
            self.run_id,
            f"; written to {where}" if where else "",
        )
        self._quiet.detach()

    # the sender thread

    def _put(self, call: _Call) -> None:
        with self._lock:
            if self._abandoned:
                self._lose(call, "sent after end_run")
                return
            self._queue.append(call)
            self._pending_metrics += call.metrics
            if self._down_since is not None:
                self._held_back += call.metrics
            while self._pending_metrics > MAX_PENDING:  # drop the oldest metrics, keep everything else
                oldest = next(
                    (c for c in self._queue if c.kind == "metrics" and c is not self._inflight), None
                )
                if oldest is None:
                    break
                self._queue.remove(oldest)
                self._pending_metrics -= oldest.metrics
                self.gap.add_metrics(oldest.args[0])
            self._lock.notify_all()

    def _send_all(self) -> None:
        backoff = FIRST_RETRY
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue or self._abandoned:
                    self._quiet.detach()
                    return
                call = self._inflight = self._queue[0]
            try:
                self._send(call)
            except Exception as e:
                with self._lock:
                    self._inflight = None
                if _refused(e):  # the server answered no: retrying cannot help
                    self._refusals += 1
                    log.log(
                        logging.WARNING if self._refusals == 1 else logging.DEBUG,
                        "tracking server %s refused %s: %s (dropped; refusals are counted in the run's "
                        "tracking_gap tag)",
                        self.tracking_uri,
                        call.kind,
                        _short(e),
                    )
                    self._done(call, lost=f"{call.kind} refused: {_short(e)}")
                    continue
                self._went_down(e)
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, MAX_RETRY if not self._closing else 2.0)
                continue
            backoff = FIRST_RETRY
            self._done(call)
            if self._down_since is not None:
                self._came_back()

    def _send(self, call: _Call) -> None:
        client, run = self.tracker.client, self.run_id
        if call.kind == "metrics":
            client.log_batch(run, metrics=call.args[0])
        elif call.kind == "params":
            for i in range(0, len(call.args[0]), BATCH):
                client.log_batch(run, params=call.args[0][i : i + BATCH])
        elif call.kind == "tags":
            for k, v in call.args[0].items():
                client.set_tag(run, k, v)
        elif call.kind in ("artifact", "artifacts"):
            path, artifact_path = call.args
            if not Path(path).exists():  # a checkpoint rotated away while the server was down
                raise _Gone(f"{path} no longer exists")
            if call.kind == "artifact":
                client.log_artifact(run, path, artifact_path)
            else:
                client.log_artifacts(run, path, artifact_path)
        elif call.kind == "terminate":
            tags = {}
            if self.outages:
                tags["tracking_outage"] = " | ".join(self.outages)
            if self.gap.describe():
                tags["tracking_gap"] = self.gap.describe()
            for k, v in tags.items():
                client.set_tag(run, k, v[:5000])
            client.set_terminated(run, status=call.args[0])

    def _done(self, call: _Call, lost: str | None = None) -> None:
        with self._lock:
            self._inflight = None
            if self._queue and self._queue[0] is call:
                self._queue.popleft()
                self._pending_metrics -= call.metrics
            if lost:
                self._lose(call, lost)

    def _lose(self, call: _Call, why: str) -> None:
        if call.kind == "metrics":
            self.gap.add_metrics(call.args[0])
        elif call.kind != "terminate":
            self.gap.other.append(f"{call.kind} {_what(call)} {why}")

    def _went_down(self, error: Exception) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.time()
            self._held_back = self._pending_metrics
        log.warning(
            "tracking server %s unreachable (%s); training goes on: metrics are kept (up to %d values) "
            "and sent when it is back",
            self.tracking_uri,
            _short(error),
            MAX_PENDING,
        )

    def _came_back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            held, self._held_back = self._held_back, 0
        seconds = time.time() - since
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since))
        self.outages.append(
            f"unreachable for {seconds:.0f} s from {start} UTC; {held} metric values sent later"
        )
        log.info(
            "tracking server %s is back after %.0f s; sending %d held metric values",
            self.tracking_uri,
            seconds,
            held,
        )

    def _write_unsent(self, calls: list[_Call]) -> Path | None:
        if self.run_folder is None or not calls:
            return None
        path = self.run_folder / UNSENT_FILE
        try:
            with path.open("a") as f:
                for call in calls:
                    if call.kind == "metrics":
                        for m in call.args[0]:
                            row = {"run_id": self.run_id, "key": m.key, "value": m.value, "step": m.step}
                            f.write(json.dumps({**row, "timestamp": m.timestamp}) + "\n")
                    elif call.kind != "terminate":
                        f.write(
                            json.dumps({"run_id": self.run_id, "call": call.kind, "args": _what(call)}) + "\n"
                        )
        except OSError as e:
            log.warning("could not write %s: %s", path, e)
            return None
        return path


class _Gone(Exception):
    """An artifact whose file disappeared before it could be sent."""


class _QuietRetries(logging.Filter):
    """Turns urllib3's "Retrying ..." warning for MLflow requests (one per retry of each call while the
    server is away) into a debug message: BufferedTracker says once that the server is unreachable."""

    LOGGER = "urllib3.connectionpool"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Retrying") and "/api/2.0/mlflow" in message:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True

    def attach(self) -> None:
        logging.getLogger(self.LOGGER).addFilter(self)

    def detach(self) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)


def _refused(error: Exception) -> bool:
    """The server answered and said no (4xx other than 429), or the file to send is gone."""
    if isinstance(error, _Gone):
        return True
    from mlflow.exceptions import RestException

    if not isinstance(error, RestException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


def _what(call: _Call) -> str:
    if call.kind in ("artifact", "artifacts"):
        return f"{call.args[0]} -> {call.args[1] or '.'}"
    if call.kind == "tags":
        return ", ".join(call.args[0])
    if call.kind == "params":
        return f"{len(call.args[0])} params"
    return call.kind


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


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
