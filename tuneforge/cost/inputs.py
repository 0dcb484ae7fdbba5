"""What `tuneforge cost` prices, read from the command line, a `tuneforge bench` results.json (through the
typed reader of tuneforge.results) and a tracked training run. Imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError

CPU_DEVICE_PREFIX = "cpu"


def throughput_from_benchmark(path: str | Path, level: int | None = None):
    """The serving throughput of a `tuneforge bench` results.json: the given level (0-based), or the level
    with the highest request throughput."""
    from tuneforge.cost.analyzer import Throughput

    results, run = _bench_run(path, level)
    return Throughput(
        run.summary.request_throughput_rps,
        run.summary.output_throughput_tok_s or None,
        "measured",
        f"{path}, {run.load.label()}",
        results.server_device or "unknown",
    )


def _bench_run(path: str | Path, level: int | None):
    """(results, the run of `level`, or the one with the highest request throughput)."""
    from tuneforge.results import read_bench_results

    results = read_bench_results(path)
    runs = results.runs
    usable = [r for r in runs if r.summary.requests.completed > 0]
    if level is not None:
        if not 0 <= level < len(runs):
            raise ConfigError(f"--level {level}: {path} has levels 0..{len(runs) - 1}")
        usable = [runs[level]]
        if runs[level].summary.requests.completed == 0:
            raise ConfigError(f"{path}: level {level} completed no request; nothing to price")
    if not usable:
        raise ConfigError(f"{path}: no level completed any request; nothing to price")
    return results, max(usable, key=lambda r: r.summary.request_throughput_rps)


def benchmark_workload(path: str | Path, level: int | None = None) -> dict[str, Any]:
    """What the priced benchmark level served: the model name, its concurrency and the mean output tokens
    per completed request (what GPU estimates are shaped to)."""
    results, run = _bench_run(path, level)
    completed = run.summary.requests.completed
    per_request = run.summary.output_tokens / completed if completed else None
    return {
        "model": results.target.get("model"),
        "concurrency": run.load.in_flight,
        "output_len": per_request or results.workload.get("max_tokens"),
    }


def training_from_mlflow(run_id: str, tracking_uri: str | None) -> tuple[float, str, str]:
    """(hours, source, device) from a tracked training run's final/train_runtime (seconds)."""
    from tuneforge.tracking import ExperimentTracker

    run = ExperimentTracker.for_run(run_id, tracking_uri).client.get_run(run_id)
    seconds = run.data.metrics.get("final/train_runtime")
    if seconds is None:
        raise ConfigError(f"MLflow run {run_id} has no final/train_runtime metric (did it finish?)")
    device = run.data.params.get("env.device", "unknown")
    return seconds / 3600.0, f"MLflow run {run_id} final/train_runtime on {device}", device


def training_hours(args: argparse.Namespace) -> tuple[float | None, str, str | None]:
    """(hours, source, device the run trained on or None) from --hours or --mlflow-run-id."""
    if args.mlflow_run_id:
        return training_from_mlflow(args.mlflow_run_id, args.tracking_uri)
    return args.hours, "given with --hours", None


def serving_throughput(args: argparse.Namespace):
    """The throughput to price: measured by --bench, given with --rps/--tok-s (an estimate), or None."""
    from tuneforge.cost.analyzer import Throughput

    if args.bench:
        throughput = throughput_from_benchmark(args.bench, args.level)
        if args.measured_on:
            throughput.device = args.measured_on
        return throughput
    if args.rps is not None or args.tok_s is not None:
        return Throughput(args.rps, args.tok_s, "estimated", "given on the command line", "unknown")
    return None


def check_training_device(inst, device: str | None) -> None:
    """A training run's duration on a CPU says nothing about a GPU instance."""
    if device is not None and device.lower().startswith(CPU_DEVICE_PREFIX) and inst.is_gpu:
        raise ConfigError(
            f"the training run ran on a CPU ({device}); its duration says nothing about GPU instance "
            f"'{inst.name}'. Use `tuneforge estimate RECIPE` for a GPU estimate, or --hours"
        )


def custom_machines(args: argparse.Namespace, default_name: str) -> list:
    """The machine of your own priced with --price-per-hour (named `default_name`), or none."""
    from tuneforge.cost.catalog import custom_instance

    if args.price_per_hour is None:
        return []
    return [
        custom_instance(
            default_name,
            args.price_per_hour,
            args.gpu,
            args.gpu_count,
            args.gpu_memory_gb,
            args.vcpus,
            args.memory_gb,
        )
    ]
