"""scripts/demo_serve.py (the GPU pipeline's `serve` stage, run here on the CPU): serve an adapter, stream
from base and adapter, benchmark the server, price it; a bad adapter ends it with the server's own error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("demo-serve") / "adapter"
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(out)
    return out


def demo_serve(model, adapter, out):
    cmd = [sys.executable, "scripts/demo_serve.py", "--model", str(model), "--adapter", str(adapter),
           "--out", str(out), "--concurrency", "1,2", "--requests", "3",
           "inference.engine=transformers"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_serves_streams_benchmarks_and_prices_the_adapter(tiny_model_dir, adapter, tmp_path):
    done = demo_serve(tiny_model_dir, adapter, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "(model=base)" in done.stdout and "(model=demo)" in done.stdout
    bench = json.loads((tmp_path / "bench" / "results.json").read_text())
    levels = {run["load"]["concurrency"]: run["summary"]["requests"] for run in bench["runs"]}
    assert levels == {c: {"total": 3, "completed": 3, "failed": 0, "errors": {}} for c in (1, 2)}
    # the server's pid reached the benchmark: its main process's own CPU share is in every run (above 1 when
    # the transformers engine generates on several threads in that process)
    assert all(run["resources"]["server_process_cpu_share"] > 0 for run in bench["runs"])
    assert (tmp_path / "cost" / "cost.html").is_file()
    # the last JSON line is the cost command's (the bench command prints one before it)
    cost = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"report"')][-1]
    measured = cost["measured_serving"]
    assert measured["basis"] == "measured" and measured["device"] == "cpu"
    assert measured["instance"] == "c7i.large" and measured["cost_per_1m_output_tokens_usd"] > 0
    assert (tmp_path / "serve.log").stat().st_size > 0


def test_a_bad_adapter_ends_with_the_servers_error_and_no_benchmark(tiny_model_dir, tmp_path):
    done = demo_serve(tiny_model_dir, tmp_path / "missing", tmp_path)
    assert done.returncode == 1
    assert f"--adapter demo={tmp_path / 'missing'}: no adapter_config.json there" in done.stderr
    assert not (tmp_path / "bench").exists()
