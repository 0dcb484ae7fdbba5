"""`tuneforge train` and `tuneforge export` as a user runs them: one process, two processes (DDP over
gloo on CPU), and against a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient


def write_recipe(path, tiny_model_dir, data_file, out, uri, **training):
    lines = [
        f"model:\n  name_or_path: {tiny_model_dir}",
        f"data:\n  train_file: {data_file}\n  max_seq_length: 64",
        "  validation_fraction: 0.0",
        f"training:\n  output_dir: {out}",
        "  num_train_epochs: 1",
        "  per_device_train_batch_size: 2",
        "  gradient_accumulation_steps: 1",
        "  logging_steps: 1",
        "  save_strategy: steps",
        "  save_steps: 2",
        '  eval_strategy: "no"',
        *[f"  {k}: {v}" for k, v in training.items()],
        f"tracking:\n  tracking_uri: {uri}",
        "inference:\n  engine: transformers  # tiny models: vLLM's start-up would dominate",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def tuneforge(*args, launcher=(), timeout=600):
    cmd = [sys.executable, *launcher, "-m", "tuneforge.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_then_export_from_the_command_line(tiny_model_dir, small_data_file, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, small_data_file, tmp_path / "run", uri)
    out = tuneforge("train", str(recipe), "training.max_steps=3")
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    assert result["global_step"] == 3 and result["run_id"]
    assert f"mlflow ui --backend-store-uri {uri}" in out.stdout
    out = tuneforge("export", result["adapter"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "merged" / "model.safetensors").is_file()
    out = tuneforge("export", str(tmp_path))
    assert out.returncode == 2 and "not an adapter folder" in out.stderr


def test_two_processes_with_ddp_on_cpu(tiny_model_dir, small_data_file, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, small_data_file, tmp_path / "run", uri)
    launcher = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()))
    out = tuneforge("train", str(recipe), launcher=launcher)
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    # 16 examples, 2 per device, 2 processes: one epoch is 4 optimizer steps (8 in one process)
    assert result["global_step"] == 4
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("tuneforge").experiment_id]
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # only rank 0 tracks
    assert out.stdout.count('"global_step"') == 1  # only rank 0 reports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_training_against_a_real_mlflow_server(tiny_model_dir, small_data_file, tmp_path, mlflow_server):
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model_dir, small_data_file, tmp_path / "run", mlflow_server
    )
    out = tuneforge("train", str(recipe), "training.max_steps=2")
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    run = client.get_run(last_json(out.stdout)["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.per_device_train_batch_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/checkpoint-2"
    }
    assert (tmp_path / "artifacts").is_dir()  # uploaded through the server, not written locally by the client
    assert "adapter/adapter_model.safetensors" in {
        a.path for a in client.list_artifacts(run.info.run_id, "adapter")
    }
