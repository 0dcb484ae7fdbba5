"""A real `tuneforge serve` process on loopback, driven by httpx and the official `openai` client.

The transformers engine serves a tiny random model (fast tier); the vLLM engine (marked `vllm`, CPU
build here) serves the embedded default. Both load a random LoRA adapter, at start and at runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import openai
import pytest
from serve_client import sse_json
from test_serve_app import free_port

from tuneforge.command import ServerNotReady, stop_process, wait_ready

KEY = "test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def random_adapter(model_path: str, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(zlib.crc32(out.name.encode()))  # the same adapter every run, one per folder name
    lora = LoraConfig(r=8, lora_alpha=256, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), lora).save_pretrained(out)
    return out


STREAM_INTERVAL = 4


@pytest.fixture(
    scope="module",
    params=["transformers", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])],
)
def server(request, tmp_path_factory, tiny_model_dir):
    engine = request.param
    if engine == "vllm":
        pytest.importorskip("vllm")
        from tuneforge.models.resolve import resolve_model

        model = resolve_model("smollm2-135m-instruct").path
    else:
        model = str(tiny_model_dir)
    root = tmp_path_factory.mktemp(f"adapters-{engine}")
    random_adapter(model, root / "first")
    random_adapter(model, root / "second")
    port = free_port()
    cmd = [
        sys.executable, "-m", "tuneforge.cli", "serve", model,
        "inference.max_model_len=512", "sampling.max_tokens=16",
        "--engine", engine, "--port", str(port),
        "--served-name", "base", "--adapter", f"first={root / 'first'}", "--adapter-dir", str(root),
        "--api-key", KEY,
    ]  # fmt: skip
    if engine == "vllm":  # chunks of up to 4 tokens (vLLM's stream interval), the answers unchanged
        cmd.append(f"inference.stream_interval={STREAM_INTERVAL}")
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/ready", proc, 600, Path(log.name))
    except ServerNotReady as e:
        proc.kill()
        pytest.fail(str(e))
    yield {"base": base, "engine": engine, "model": model, "root": root, "log": log.name}
    stop_process(proc, grace_s=30)


def post(server, path, body):
    return httpx.post(server["base"] + path, json=body, headers=AUTH, timeout=120)


def test_ready_reports_the_settings_in_use(server):
    ready = httpx.get(server["base"] + "/ready").json()
    assert ready["models"] == ["base", "first"]
    engine = ready["engine"]
    assert engine["kind"] == server["engine"] and engine["max_model_len"] == 512
    assert engine["dtype"] == "float32"  # the CPU default (see vllm_engine.serving_dtype)
    if server["engine"] == "vllm":  # property 20 on the running engine: what vLLM itself reports
        assert engine["kv_cache_memory_bytes"] == 2**30 and engine["enable_prefix_caching"] is True
        assert engine["tensor_parallel_size"] == 1 and engine["max_lora_rank"] == 64


def test_generate_streams_incrementally_and_matches_the_json_answer(server):
    body = {"prompt": CHAT, "max_tokens": 24, "temperature": 0}
    arrivals, raw = [], ""
    with httpx.stream("POST", server["base"] + "/generate", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_text():
            raw += chunk
            arrivals.append((time.perf_counter(), chunk.count("data: ")))
    events = sse_json(raw)
    tokens = [e["text"] for e in events if e["type"] == "token"]
    assert events[-1]["type"] == "done" and events[-1]["completion_tokens"] >= len(tokens) >= 2
    assert len(arrivals) >= 2 and arrivals[-1][0] > arrivals[0][0]  # events arrived over time
    whole = post(server, "/generate", {**body, "stream": False}).json()
    assert "".join(tokens) == whole["text"] and whole["finish_reason"] == events[-1]["finish_reason"]
    if server["engine"] == "vllm":
        assert whole["text"] == "The capital of France is Paris."
        # the first token alone, then one event per STREAM_INTERVAL tokens, the last one possibly shorter
        n = events[-1]["completion_tokens"]
        assert len(tokens) <= 2 + (n - 1) // STREAM_INTERVAL < n


def test_batch_gives_one_result_per_prompt_in_order(server):
    prompts = ["One two three", CHAT, "Hello", "The sky is"]
    r = post(server, "/generate/batch", {"prompts": prompts, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 4 and body["latency_ms"] > 0
    singles = [
        post(server, "/generate", {"prompt": p, "max_tokens": 8, "temperature": 0, "stream": False})
        for p in prompts
    ]
    if server["engine"] == "vllm":  # continuous batching keeps each result identical to its single run
        assert body["results"] == [s.json()["text"] for s in singles]
    assert [d["prompt_tokens"] for d in body["details"]] == [s.json()["prompt_tokens"] for s in singles]


def test_official_openai_client(server):
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == ["base", "first"]
    done = client.completions.create(model="base", prompt="The sky is", max_tokens=6, temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.completion_tokens >= 1
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model="base", messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model="base", messages=messages, max_tokens=20, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content
    if server["engine"] == "vllm":
        assert chat.choices[0].message.content == "The capital of France is Paris."
    tuned = client.chat.completions.create(model="first", messages=messages, max_tokens=20, temperature=0)
    assert tuned.choices[0].message.content != chat.choices[0].message.content  # the adapter is applied
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="base", prompt="word " * 600, max_tokens=4)
    assert too_long.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="base", prompt="hi", temperature=3)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["base"] + "/v1", api_key="wrong").models.list()


def test_adapters_at_runtime_batched_with_base(server):
    r = post(server, "/v1/adapters", {"name": "second", "path": "second"})
    assert r.status_code == 200, r.text
    assert post(server, "/v1/adapters", {"name": "evil", "path": "../../etc"}).status_code == 403
    base = {"prompt": CHAT, "max_tokens": 12, "temperature": 0, "stream": False}
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # base and two adapters at the same time
        outs = list(
            pool.map(
                lambda m: post(server, "/generate", {**base, "model": m}).json(), ["base", "first", "second"]
            )
        )
    assert len({o["text"] for o in outs}) == 3
    assert httpx.delete(server["base"] + "/v1/adapters/second", headers=AUTH).status_code == 200
    assert post(server, "/generate", {**base, "model": "second"}).status_code == 404


def test_metrics_and_health(server):
    assert httpx.get(server["base"] + "/health").json()["status"] == "ok"
    text = httpx.get(server["base"] + "/metrics", headers=AUTH).text
    assert 'tuneforge_requests_total{route="/generate",status="200"}' in text
    assert "tuneforge_time_to_first_token_seconds_bucket" in text


@pytest.mark.vllm
def test_vllm_bench_serve_runs_against_it_unchanged(server, tmp_path):
    """vLLM's own load generator (`vllm bench serve`) drives our OpenAI routes, key and all."""
    pytest.importorskip("vllm")
    argv = [
        "--backend", "openai", "--base-url", server["base"], "--model", "base",
        "--tokenizer", server["model"], "--dataset-name", "random",
        "--random-input-len", "16", "--random-output-len", "6",
        "--num-prompts", "6", "--ignore-eos", "--save-result", "--result-dir", str(tmp_path),
        "--result-filename", "r.json", "--disable-tqdm", "--header", f"Authorization=Bearer {KEY}",
    ]  # fmt: skip
    code = (
        "import argparse, sys\n"
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "p = argparse.ArgumentParser(); add_cli_args(p)\n"
        "main(p.parse_args(sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else {}
    assert result.get("completed") == 6, out.stdout[-2000:] + out.stderr[-2000:]
    assert result["failed"] == 0 and result["total_output_tokens"] == 6 * 6
