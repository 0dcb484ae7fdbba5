"""Trainer callbacks: MLflow logging, divergence detection, tokens/s, and a clean stop on Ctrl-C."""

from __future__ import annotations

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


class TrackingCallback(TrainerCallback):
    """Logs every Trainer log (loss, learning rate, grad norm, eval metrics) plus tokens/s to MLflow,
    and uploads each checkpoint's adapter as an artifact of the same run."""

    def __init__(self, tracker, log_checkpoints: bool = True):
        self.tracker = tracker
        self.log_checkpoints = log_checkpoints
        self._last = (None, 0)  # (time, tokens seen) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

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


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
