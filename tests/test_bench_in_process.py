"""`tuneforge bench --in-process`: an engine in the benchmark's own process, logged to an MLflow run."""

from __future__ import annotations

import json

import mlflow
import pytest
from test_train_cli import tuneforge


def test_in_process_sweep_counts_every_request_and_logs_to_mlflow(tiny_model_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        pass
    out = tuneforge(
        "bench", "--in-process", str(tiny_model_dir), "--engine", "transformers", "--concurrency", "1,3",
        "--requests", "6", "--input-len", "8", "--output-len", "5", "--ignore-eos", "--quiet",
        "--out", str(tmp_path / "bench"), "--mlflow-run-id", run.info.run_id, "--tracking-uri", uri,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert results["target"]["api"] == "engine"
    assert [r["load"]["concurrency"] for r in results["runs"]] == [1, 3]
    for level in results["runs"]:
        s = level["summary"]
        assert s["requests"] == {"total": 6, "completed": 6, "failed": 0, "errors": {}}
        assert s["output_tokens"] == 6 * 5  # ignore_eos: every request makes exactly 5 tokens
        assert s["latency_ms"]["ttft"]["p50"] <= s["latency_ms"]["e2e"]["p50"]
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    assert (
        metrics["bench/c3/request_throughput_rps"] == results["runs"][1]["summary"]["request_throughput_rps"]
    )
    assert metrics["bench/c1/failed"] == 0


def test_cost_of_a_tracked_run_is_logged_back_to_it(tmp_path):
    """Training hours come from the run's measured runtime; the costs and the report go back to the run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        mlflow.log_metric("final/train_runtime", 1800.0)  # half an hour
    out = tuneforge(
        "cost", "instance", "c7i.large", "--mlflow-run-id", run.info.run_id, "--tracking-uri", uri,
        "--log-to-run", "--rps", "0.5", "--out", str(tmp_path / "cost"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    logged = mlflow.get_run(run.info.run_id).data
    hourly = logged.metrics["cost/usd_per_hour"]
    assert logged.metrics["cost/training_usd"] == pytest.approx(hourly * 0.5)
    assert logged.metrics["cost/per_1k_requests_usd"] == pytest.approx(hourly / (3600 * 0.5) * 1000)
    assert logged.tags["cost/instance"] == "c7i.large"
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id, "cost")}
    assert artifacts == {"cost/cost.md", "cost/cost.html", "cost/cost.json"}
