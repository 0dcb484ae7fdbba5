"""Properties 20-28: engine settings, quantization, batching, and the HTTP behaviour of the service.

HTTP properties run the real app with a scripted engine (tests/fake_engine.py); 20 checks the vLLM
arguments we build, 21 and 22 use a tiny real model through the transformers engine.
"""

from __future__ import annotations

import re
import zlib

import pytest
from fake_engine import FakeEngine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_client import app_client, sse_json

from tuneforge.config import InferenceConfig, SamplingParams
from tuneforge.engines.base import EngineDead, EngineOutOfMemory

WORDS = st.text(alphabet="abcdefghij ", min_size=1, max_size=30).filter(lambda s: s.strip())
SLOW_OK = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# Feature: llm-fine-tuning-inference, Property 20: vLLM configuration applied
@pytest.mark.vllm
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tp=st.integers(1, 8),
    mem=st.floats(0.05, 1.0),
    max_len=st.none() | st.integers(16, 32768),
    dtype=st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
    quant=st.sampled_from([None, "fp8", "awq", "gptq", "bitsandbytes"]),
    kv=st.none() | st.floats(0.1, 64),
    lora=st.booleans(),
    rank=st.sampled_from([8, 16, 32, 64, 128]),
    cpu=st.booleans(),
    kv_dtype=st.sampled_from(["auto", "fp8"]),
    spec=st.none() | st.integers(1, 16),
    seqs=st.none() | st.integers(1, 4096),
    step_tokens=st.none() | st.integers(1, 65536),
    backend=st.sampled_from(["auto", "marlin", "machete"]),
    interval=st.integers(1, 64),
    attention=st.sampled_from(["auto", "FLASH_ATTN", "TRITON_ATTN", "CPU_ATTN"]),
)
def test_vllm_configuration_applied(
    tiny_shapes,
    tp,
    mem,
    max_len,
    dtype,
    quant,
    kv,
    lora,
    rank,
    cpu,
    kv_dtype,
    spec,
    seqs,
    step_tokens,
    backend,
    interval,
    attention,
):
    pytest.importorskip("vllm")
    from tuneforge.engines.vllm_engine import CPU_KV_CACHE_GB, build_engine_args

    cfg = InferenceConfig(
        tensor_parallel_size=tp,
        gpu_memory_utilization=mem,
        max_model_len=max_len,
        dtype=dtype,
        quantization=quant,
        kv_cache_gb=kv,
        max_lora_rank=rank,
        kv_cache_dtype=kv_dtype,
        speculative=None if spec is None else "ngram",
        speculative_tokens=spec or 4,
        max_num_seqs=seqs,
        max_num_batched_tokens=step_tokens,
        linear_backend=backend,
        stream_interval=interval,
        attention_backend=attention,
    )
    path = str(tiny_shapes[64])
    args = build_engine_args(path, cfg, enable_lora=lora, cpu=cpu)
    assert args.model == path
    assert args.tensor_parallel_size == tp
    assert args.gpu_memory_utilization == mem
    assert args.max_model_len == max_len
    assert args.quantization == quant
    assert args.dtype == (dtype if dtype != "auto" else ("float32" if cpu else "auto"))
    assert args.enable_lora is lora and args.enable_prefix_caching is True
    if lora:
        assert args.max_lora_rank == rank
    expected_kv = kv if kv is not None else (CPU_KV_CACHE_GB if cpu else None)
    assert args.kv_cache_memory_bytes == (None if expected_kv is None else int(expected_kv * 2**30))
    assert args.kv_cache_dtype == kv_dtype
    # None leaves vLLM's own default (vllm serve's for the device), not a number of ours
    assert args.max_num_seqs == seqs and args.max_num_batched_tokens == step_tokens
    assert args.linear_backend == backend  # "auto" is vLLM's own default
    assert args.stream_interval == interval  # 1, vLLM's default, streams every token
    assert args.attention_backend == (None if attention == "auto" else attention)  # None: vLLM's choice
    if spec is None:
        assert args.speculative_config is None
    else:  # the GPU proposer on CUDA, numba's on CPU; drafts from the prompt
        assert args.speculative_config["method"] == ("ngram" if cpu else "ngram_gpu")
        assert args.speculative_config["num_speculative_tokens"] == spec


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    from tuneforge.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("shapes")
    return {
        h: build_tiny_model(root / f"h{h}", hidden_size=h, num_heads=4, intermediate_size=2 * h)
        for h in (64, 128)
    }


# Feature: llm-fine-tuning-inference, Property 21: Quantization reduces precision
@SLOW_OK
@given(bits=st.sampled_from([4, 8]), hidden=st.sampled_from([64, 128]), layer=st.integers(0, 1))
def test_quantization_reduces_precision(tiny_shapes, bits, hidden, layer):
    pytest.importorskip("bitsandbytes")
    import torch

    from tuneforge.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine.start(
        str(tiny_shapes[hidden]), InferenceConfig(quantization="bitsandbytes", quantization_bits=bits)
    )
    proj = engine.model.model.layers[layer].self_attn.q_proj
    weight = proj.weight
    if bits == 4:  # two 4-bit values per byte
        assert weight.dtype == torch.uint8 and weight.numel() * 2 == hidden * hidden
        assert weight.quant_state is not None
    else:
        assert weight.dtype == torch.int8 and weight.numel() == hidden * hidden
    stored_bits = weight.numel() * weight.element_size() * 8 / (hidden * hidden)
    assert stored_bits == bits


@pytest.fixture(scope="module")
def tiny_engine(tiny_shapes, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.engines.transformers_engine import TransformersEngine

    path = tiny_shapes[64]
    adapter = tmp_path_factory.mktemp("adapter")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora).save_pretrained(adapter)
    engine = TransformersEngine.start(str(path), InferenceConfig())
    engine.load_adapter_now("a", str(adapter))
    return engine


# Feature: llm-fine-tuning-inference, Property 22: Batch processing uses single forward pass
@SLOW_OK
@given(prompts=st.lists(WORDS, min_size=1, max_size=8), max_tokens=st.integers(1, 6), adapter=st.booleans())
def test_batch_uses_single_forward_pass(tiny_engine, prompts, max_tokens, adapter):
    import asyncio

    calls: list[int] = []
    inner = tiny_engine.model.get_base_model().model  # the decoder stack, under the LM head and PEFT
    hook = inner.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        sampling = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        done = asyncio.run(tiny_engine.complete_batch(prompts, sampling, "a" if adapter else None))
    finally:
        hook.remove()
    assert len(done) == len(prompts)
    # one forward pass per generated token, each over the whole batch: not one per prompt
    assert calls == [len(prompts)] * max_tokens
    assert all(c.completion_tokens == max_tokens for c in done)


# Feature: llm-fine-tuning-inference, Property 23: Streaming emits tokens incrementally
@settings(max_examples=100, deadline=None)
@given(prompt=WORDS, max_tokens=st.integers(2, 12), openai=st.booleans())
def test_streaming_emits_tokens_incrementally(prompt, max_tokens, openai):
    with app_client() as client:
        if openai:
            r = client.post(
                "/v1/completions",
                json={"model": "fake", "prompt": prompt, "max_tokens": max_tokens, "stream": True},
            )
            texts = [
                e["choices"][0]["text"] for e in sse_json(r.text) if e != "[DONE]" and e["choices"][0]["text"]
            ]
        else:
            r = client.post("/generate", json={"prompt": prompt, "max_tokens": max_tokens})
            texts = [e["text"] for e in sse_json(r.text) if e["type"] == "token"]
        whole = client.post(
            "/generate", json={"prompt": prompt, "max_tokens": max_tokens, "stream": False}
        ).json()
    assert r.headers["content-type"].startswith("text/event-stream")
    assert len(texts) == max_tokens  # one event per token, not one event with everything
    assert "".join(texts) == whole["text"]


# Feature: llm-fine-tuning-inference, Property 24: Batch results match prompts
@settings(max_examples=100, deadline=None)
@given(prompts=st.lists(WORDS, min_size=1, max_size=20), max_tokens=st.integers(1, 5))
def test_batch_results_match_prompts(prompts, max_tokens):
    with app_client() as client:
        r = client.post("/generate/batch", json={"prompts": prompts, "max_tokens": max_tokens})
        engine = client.engine
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == len(prompts) == len(body["details"])
    for prompt, text in zip(prompts, body["results"], strict=True):  # in order: each answers its prompt
        assert text.split()[0].startswith(str(zlib.crc32(prompt.encode()) % 1000))
    assert engine.batches == [len(prompts)]  # one engine batch for the request
    assert body["latency_ms"] > 0


def _bad_requests():
    ok = {"prompt": "a b", "max_tokens": 4}
    return st.one_of(
        st.floats(2.01, 1e6).map(lambda t: ("/generate", {**ok, "temperature": t}, 400, "temperature")),
        st.floats(-1e6, -0.01).map(lambda t: ("/generate", {**ok, "temperature": t}, 400, "temperature")),
        st.integers(-1000, 0).map(lambda n: ("/generate", {**ok, "max_tokens": n}, 400, "max_tokens")),
        st.floats(1.01, 100).map(lambda p: ("/generate", {**ok, "top_p": p}, 400, "top_p")),
        st.just(("/generate", {**ok, "prompt": ""}, 400, "prompt")),
        st.integers(64, 200).map(lambda n: ("/generate", {**ok, "prompt": "x " * n}, 400, "prompt")),
        st.integers(63, 500).map(lambda n: ("/generate", {**ok, "max_tokens": n}, 400, "max_tokens")),
        st.integers(9, 40).map(lambda n: ("/generate/batch", {"prompts": ["a"] * n}, 400, "prompts")),
        st.just(("/generate/batch", {"prompts": []}, 400, "prompts")),
        st.just(("/generate/batch", {"prompts": ["a", ""]}, 400, "prompts[1]")),
        st.text(min_size=1, max_size=10)
        .filter(lambda m: m != "fake")
        .map(lambda m: ("/generate", {**ok, "model": m}, 404, "model")),
        st.just(("/generate", {**ok, "colour": "red"}, 400, "colour")),
        st.just(("/generate", {"max_tokens": 3}, 400, "prompt")),
        st.just(("/v1/completions", {"model": "fake", "prompt": "a", "n": 2}, 400, "n")),
        st.just(("/v1/chat/completions", {"model": "fake", "messages": []}, 400, "messages")),
        st.just(("/generate", "{not json", 400, None)),
    )


# Feature: llm-fine-tuning-inference, Property 25: Errors return error status
@settings(max_examples=100, deadline=None)
@given(case=_bad_requests(), stream=st.booleans())
def test_errors_return_error_status(case, stream):
    route, body, status, param = case
    with app_client(max_batch_prompts=8) as client:
        if isinstance(body, str):
            r = client.post(route, content=body, headers={"content-type": "application/json"})
        else:
            if route == "/generate":
                body = {**body, "stream": stream}
            r = client.post(route, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["code"] == status
    if param is not None:
        assert error["param"] == param, error
    assert "Traceback" not in r.text


# Feature: llm-fine-tuning-inference, Property 26: Streaming uses SSE format
@settings(max_examples=100, deadline=None)
@given(
    prompt=WORDS,
    max_tokens=st.integers(1, 10),
    stop=st.lists(st.sampled_from(["w1", "w3", "zz"]), max_size=2),
    route=st.sampled_from(["/generate", "/v1/completions", "/v1/chat/completions"]),
)
def test_streaming_uses_sse_format(prompt, max_tokens, stop, route):
    body = {"max_tokens": max_tokens, "stop": stop, "stream": True, "model": "fake"}
    if route == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    with app_client() as client:
        r = client.post(route, json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_json(r.text)  # asserts "data: " + payload + blank line for every event
    if route == "/generate":
        assert events[-1]["type"] == "done" and all(e["type"] == "token" for e in events[:-1])
        text, reason = "".join(e["text"] for e in events[:-1]), events[-1]["finish_reason"]
    else:
        assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
        chunks = events[:-1]
        assert len({c["id"] for c in chunks}) == 1  # one completion, one id
        if route == "/v1/completions":
            assert {c["object"] for c in chunks} == {"text_completion"}
            text = "".join(c["choices"][0]["text"] for c in chunks)
        else:
            assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        assert all(x is None for x in reasons[:-1])
        reason = reasons[-1]
    # the fake engine answers " {key}w0 {key}w1 ...": the stream is that text cut before the first stop
    key = re.match(r" (\d+)w0", text).group(1)
    full = "".join(f" {key}w{i}" for i in range(max_tokens))
    hits = [full.index(s) for s in stop if s in full]
    assert text == (full[: min(hits)] if hits else full)
    assert reason == ("stop" if hits else "length")


# Feature: llm-fine-tuning-inference, Property 27: Streaming sends completion signal
@settings(max_examples=100, deadline=None)
@given(
    prompt=WORDS, max_tokens=st.integers(1, 10), words=st.none() | st.integers(0, 10), openai=st.booleans()
)
def test_streaming_sends_completion_signal(prompt, max_tokens, words, openai):
    with app_client(FakeEngine(words=words)) as client:
        if openai:
            r = client.post(
                "/v1/completions",
                json={"model": "fake", "prompt": prompt, "max_tokens": max_tokens, "stream": True},
            )
            events = sse_json(r.text)
            assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
            assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
            return
        r = client.post("/generate", json={"prompt": prompt, "max_tokens": max_tokens})
    events = sse_json(r.text)
    last = events[-1]
    assert last["type"] == "done" and [e["type"] for e in events].count("done") == 1
    n = min(max_tokens, words if words is not None else max_tokens)
    assert last["completion_tokens"] == n
    assert last["finish_reason"] == ("length" if n == max_tokens else "stop")


# Feature: llm-fine-tuning-inference, Property 28: Streaming errors close stream
@settings(max_examples=100, deadline=None)
@given(
    max_tokens=st.integers(2, 10),
    data=st.data(),
    error=st.sampled_from(
        [EngineOutOfMemory("out of memory: lower max_tokens"), EngineDead("engine died"), RuntimeError("bug")]
    ),
    route=st.sampled_from(["/generate", "/v1/completions", "/v1/chat/completions"]),
)
def test_streaming_errors_close_stream(max_tokens, data, error, route):
    fail_at = data.draw(st.integers(1, max_tokens - 1))  # after the first event: an in-band error
    body = {"model": "fake", "max_tokens": max_tokens, "stream": True}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in route else {"prompt": "hi"})
    with app_client(FakeEngine(fail_at=fail_at, error=error)) as client:
        r = client.post(route, json=body)
        metrics = client.get("/metrics").text
        ready = client.get("/ready")  # the server still serves
    assert r.status_code == 200
    events = sse_json(r.text)
    last = events[-1]
    assert "[DONE]" not in events
    err = last["error"]
    assert err["message"] and err["code"] in (500, 503)
    assert "Traceback" not in r.text and ("bug" not in err["message"])  # no internals leak
    if route == "/generate":
        assert last["type"] == "error" and all(e["type"] == "token" for e in events[:-1])
        assert len(events) - 1 == fail_at
    assert 'tuneforge_errors_total{kind="' in metrics
    assert ready.status_code == 200
