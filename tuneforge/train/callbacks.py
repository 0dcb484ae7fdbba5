"""Trainer callbacks: MLflow logging, divergence detection, tokens/s, and a clean stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import signal
import statistics
import time
from collections import deque
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json")
HISTORY_FILE = "train_history.jsonl"  # read by tuneforge/pipeline/record.py (which imports no torch)


class TrackingCallback(TrainerCallback):
    """Logs every Trainer log (loss, learning rate, grad norm, eval metrics) plus tokens/s to MLflow and,
    one JSON line per log, to <output_dir>/train_history.jsonl (the run report's curves, without MLflow);
    uploads each checkpoint's adapter as an artifact of the same run."""

    def __init__(self, tracker, log_checkpoints: bool = True):
        self.tracker = tracker
        self.log_checkpoints = log_checkpoints
        self._last = (None, 0)  # (time, tokens seen) at the previous log
        self._history: Path | None = None  # None: not written (another rank, or it could not be written)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen)
        if state.is_world_process_zero:
            self._history = Path(args.output_dir) / HISTORY_FILE
            self._write_history(_keep_history_to, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        then, tokens_then = self._last
        if "loss" in metrics and then is not None and now > then and tokens > tokens_then:
            metrics["tokens_per_second"] = (tokens - tokens_then) / (now - then)
            logs["tokens_per_second"] = round(metrics["tokens_per_second"], 1)
            self._last = (now, tokens)
        if self.tracker is not None and metrics:
            self.tracker.log_metrics(metrics, step=state.global_step)
        if metrics:
            self._write_history(_append_history, {"step": state.global_step, **metrics})

    def on_train_end(self, args, state, control, **kwargs):
        memory, kind = peak_memory_gb()
        record = {"step": state.global_step, "peak_memory_gb": memory, "peak_memory_of": kind}
        self._write_history(_append_history, record)

    def _write_history(self, write, arg) -> None:
        """The history serves the report: a failure to write it (a full disk) is a warning, not a stop."""
        if self._history is None:
            return
        try:
            write(self._history, arg)
        except OSError as e:
            log.warning("cannot write %s (%s); training goes on without it", self._history, e)
            self._history = None

    def on_save(self, args, state, control, **kwargs):
        if self.tracker is None or not self.log_checkpoints:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for name in ADAPTER_FILES:
            if (folder / name).is_file():
                self.tracker.log_artifact(folder / name, f"checkpoints/{folder.name}")


class DivergenceCallback(TrainerCallback):
    """A NaN/inf loss, or one far above the running median of recent losses, is divergence: it is logged
    as a warning and, when `stop` is set, training stops after saving a checkpoint."""

    def __init__(self, factor: float = 10.0, stop: bool = True, window: int = 20):
        self.factor, self.stop = factor, stop
        self.recent: deque[float] = deque(maxlen=window)
        self.diverged_at: int | None = None
        self.reason: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        reason = None
        if not math.isfinite(loss):
            reason = f"loss is {loss}"
        elif len(self.recent) >= 3 and loss > self.factor * statistics.median(self.recent):
            reason = (
                f"loss {loss:.4g} is over {self.factor:g}x its running median "
                f"{statistics.median(self.recent):.4g}"
            )
        if reason is None:
            self.recent.append(loss)
            return
        self.diverged_at, self.reason = state.global_step, reason
        log.warning(
            "divergence at step %d: %s%s",
            state.global_step,
            reason,
            "; stopping with a checkpoint (training.stop_on_divergence)" if self.stop else "",
        )
        if self.stop:
            control.should_save = True
            control.should_training_stop = True


class InterruptCallback(TrainerCallback):
    """The first Ctrl-C asks for a checkpoint and a clean stop after the current step; a second one
    interrupts at once."""

    def __init__(self):
        self.interrupted = False
        self._previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def _handle(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        log.warning("Ctrl-C: saving a checkpoint and stopping after this step (press again to abort)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def peak_memory_gb() -> tuple[float, str]:
    """Peak memory so far: allocated GPU memory on CUDA, else the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"  # KiB on Linux


class EstimateCallback(TrainerCallback):
    """After a few measured steps (the first, which warms up, excluded) print how long the run will take
    and the peak memory so far; log both to the tracker."""

    def __init__(self, tracker=None, measure_steps: int = 3):
        self.tracker, self.measure_steps = tracker, measure_steps
        self._start: float | None = None
        self._start_step = 0
        self.seconds_per_step: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._start is None:  # the first step warms up: start the clock after it
            self._start, self._start_step = now, state.global_step
            return
        done = state.global_step - self._start_step
        if self.seconds_per_step is None and done >= self.measure_steps:
            self.seconds_per_step = (now - self._start) / done
            remaining = max(state.max_steps - state.global_step, 0) * self.seconds_per_step
            memory, kind = peak_memory_gb()
            log.info(
                "estimate: %d steps x %.2f s/step = %s in all, %s left; peak memory %.2f GB (%s)",
                state.max_steps,
                self.seconds_per_step,
                _duration(state.max_steps * self.seconds_per_step),
                _duration(remaining),
                memory,
                kind,
            )
            if self.tracker is not None:
                self.tracker.log_metrics(
                    {
                        "estimate/seconds_per_step": self.seconds_per_step,
                        "estimate/total_seconds": state.max_steps * self.seconds_per_step,
                        "peak_memory_gb": memory,
                    },
                    step=state.global_step,
                )

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.log_metrics({"peak_memory_gb": peak_memory_gb()[0]}, step=state.global_step)


def _keep_history_to(path: Path, step: int) -> None:
    """A fresh run starts an empty history; a resumed one keeps what was logged up to its checkpoint."""
    kept = []
    if step > 0 and path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):  # a line half-written at a kill
                if json.loads(line)["step"] <= step:
                    kept.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in kept))


def _append_history(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
