"""Every status path of the service, with a scripted engine behind the real app."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fake_engine import FakeEngine
from serve_client import app_client, sse_json

from tuneforge.engines.base import EngineOutOfMemory
from tuneforge.serve.app import build_app
from tuneforge.serve.settings import ServeSettings


def test_not_loaded_is_503_with_retry_after_then_ready():
    gate = threading.Event()

    def slow_factory(settings):
        gate.wait(10)
        return FakeEngine()

    app = build_app(ServeSettings(model="fake"), engine_factory=slow_factory)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        r = client.post("/generate", json={"prompt": "hi", "stream": False, "max_tokens": 4})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "loading" in r.json()["error"]["message"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert client.get("/health").json() == {"status": "ok", "engine": "loading"}  # alive while loading
        gate.set()
        for _ in range(100):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.02)
        assert (
            client.post("/generate", json={"prompt": "hi", "stream": False, "max_tokens": 4}).status_code
            == 200
        )


def test_failed_load_is_reported_by_health_and_ready():
    def broken(settings):
        raise OSError("no such model folder: /nowhere")

    app = build_app(ServeSettings(model="fake"), engine_factory=broken)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for _ in range(100):
            if client.get("/health").status_code == 503:
                break
            time.sleep(0.02)
        health = client.get("/health")
        assert health.status_code == 503 and "/nowhere" in health.json()["error"]
        r = client.post("/generate", json={"prompt": "hi"})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]


def test_dead_engine_fails_health():  # with no restart left (restarts: test_reliability_serve.py)
    with app_client(FakeEngine(healthy=False), engine_restarts=0) as client:
        assert client.get("/health").status_code == 503


def test_out_of_memory_is_503_with_advice_and_the_server_keeps_serving():
    engine = FakeEngine(
        fail_at=0, error=EngineOutOfMemory("out of memory: send fewer prompts or lower max_tokens")
    )
    with app_client(engine) as client:
        for body in ({"prompt": "a", "stream": False, "max_tokens": 4}, {"prompt": "a", "max_tokens": 4}):
            r = client.post("/generate", json=body)
            assert r.status_code == 503, r.text  # before the first event: a status, not a stream
            assert "lower max_tokens" in r.json()["error"]["message"]
        batch = client.post("/generate/batch", json={"prompts": ["a", "b"], "max_tokens": 4})
        assert batch.status_code == 503 and batch.json()["error"]["type"] == "out_of_memory"
        engine.fail_at = None
        ok = client.post("/generate", json={"prompt": "a", "max_tokens": 3, "stream": False})
        assert ok.status_code == 200 and ok.json()["completion_tokens"] == 3


def test_timeout_is_504_with_the_partial_text():
    with app_client(FakeEngine(delay=0.05), request_timeout_s=0.18) as client:
        r = client.post("/generate", json={"prompt": "a", "max_tokens": 50, "stream": False})
        assert r.status_code == 504
        body = r.json()
        assert body["error"]["type"] == "timeout" and body["partial_text"].startswith(" ")
        assert 1 <= len(body["partial_text"].split()) < 50
        streamed = sse_json(client.post("/generate", json={"prompt": "a", "max_tokens": 50}).text)
        assert streamed[-1]["type"] == "error" and streamed[-1]["error"]["code"] == 504
        tokens = "".join(e["text"] for e in streamed[:-1])
        assert streamed[-1]["partial_text"] == tokens
        assert client.engine.cancelled == 2  # both generations were stopped in the engine


def test_the_deadline_holds_when_it_passes_while_a_chunk_is_being_sent():
    """The engine has every chunk ready at once, so no wait for it is ever cut: the deadline must still end
    the stream at the next chunk once it has passed during a slow send."""
    from tuneforge.config import SamplingParams
    from tuneforge.serve.errors import GenerationTimeout
    from tuneforge.serve.metrics import ServerMetrics
    from tuneforge.serve.service import GenerationService

    async def consume() -> tuple[list[str], GenerationTimeout | None]:
        svc = GenerationService(ServeSettings(request_timeout_s=0.1), ServerMetrics())
        svc.engine = FakeEngine(max_model_len=1024)
        got: list[str] = []
        try:
            async for chunk in svc._timed("a", SamplingParams(max_tokens=20), None):
                got.append(chunk.text)
                await asyncio.sleep(0.04)  # a slow client: the deadline passes here, not in the engine
        except GenerationTimeout as e:
            return got, e
        return got, None

    got, error = asyncio.run(consume())
    assert error is not None and 2 <= len(got) <= 4  # 0.1 s at 0.04 s a chunk, not all 20
    assert error.partial_text == "".join(got)


def test_sampling_defaults_come_from_the_request_then_the_recipe_then_the_model_then_openai(tmp_path):
    from tuneforge.config import SamplingParams

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "generation_config.json").write_text('{"temperature": 0.6, "top_p": 0.95, "do_sample": true}')

    def sent(client, **fields):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        s = client.engine.samplings[-1]
        return s.temperature, s.top_p

    with app_client(model=str(model), served_name="m") as client:
        assert sent(client) == (0.6, 0.95)  # the model's generation_config, as vLLM applies it
        assert sent(client, temperature=0.0, top_p=0.5) == (0.0, 0.5)
    with app_client(model=str(model), served_name="m", sampling=SamplingParams(temperature=0.2)) as client:
        assert sent(client) == (0.2, 0.95)  # the recipe's server default beats the model's
    with app_client(served_name="m") as client:  # no generation_config: OpenAI's and vLLM's defaults
        assert sent(client) == (1.0, 1.0)


def test_overload_is_429_with_retry_after():
    # each admitted request holds its slot for 8 x 0.25 s, far longer than six threads take to send theirs
    engine = FakeEngine(delay=0.25)
    with app_client(engine, max_pending=2) as client:
        import concurrent.futures

        def call(_):
            return client.post("/generate", json={"prompt": "a", "max_tokens": 8, "stream": False})

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(call, range(6)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 429, 429, 429, 429]  # exactly max_pending admitted, every other one refused
    rejected = next(r for r in results if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["message"] == (
        "the server is at its limit of 2 requests in progress (max_pending); retry shortly"
    )


def test_api_key_guards_everything_but_probes():
    with app_client(api_key="s3cret") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        for method, path in (("post", "/generate"), ("get", "/v1/models"), ("get", "/metrics")):
            r = getattr(client, method)(path, **({"json": {"prompt": "a"}} if method == "post" else {}))
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        wrong = client.get("/v1/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = client.get("/v1/models", headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200


def test_body_size_limit_is_413():
    with app_client(max_body_bytes=2048) as client:
        r = client.post("/generate", json={"prompt": "a " * 5000})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]

        def chunks():
            for _ in range(10):
                yield b" " * 512

        chunked = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413


def test_cors_is_settable():
    with app_client(cors_origins=["https://app.example.com"]) as client:
        r = client.options(
            "/generate",
            headers={"origin": "https://app.example.com", "access-control-request-method": "POST"},
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    with app_client() as client:
        r = client.get("/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_adapters_load_list_unload_and_no_path_traversal(tmp_path):
    root = tmp_path / "adapters"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "adapter_config.json").write_text("{}")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}")
    (root / "link").symlink_to(outside)
    sibling = tmp_path / "adapters-evil"  # shares the adapter folder's name as a string prefix
    sibling.mkdir()
    (sibling / "adapter_config.json").write_text("{}")
    with app_client(adapter_dir=str(root)) as client:
        assert client.post("/v1/adapters", json={"name": "demo", "path": "demo"}).status_code == 200
        for path in (
            "../secret",
            str(outside),
            "link",
            "demo/../../secret",
            str(sibling),
            "../adapters-evil",
        ):
            r = client.post("/v1/adapters", json={"name": "x", "path": path})
            assert r.status_code == 403 and r.json()["error"]["param"] == "path", path
        assert client.post("/v1/adapters", json={"name": "x", "path": "missing"}).status_code == 400
        assert client.post("/v1/adapters", json={"name": "x", "path": "a\u0000b"}).status_code == 400  # NUL
        assert client.post("/v1/adapters", json={"name": "fake", "path": "demo"}).status_code == 400
        assert client.post("/v1/adapters", json={"name": "a/b", "path": "demo"}).status_code == 400
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["fake", "demo"]
        # base and adapter requests in the same server, chosen per request by model name
        base = client.post("/generate", json={"prompt": "q", "max_tokens": 2, "stream": False}).json()["text"]
        tuned = client.post(
            "/generate", json={"prompt": "q", "max_tokens": 2, "stream": False, "model": "demo"}
        )
        assert "demo:" in tuned.json()["text"] and "demo:" not in base
        assert (
            client.post("/v1/load_lora_adapter", json={"lora_name": "v", "lora_path": "demo"}).status_code
            == 200
        )
        assert client.get("/v1/adapters").json()["adapters"][1]["name"] == "v"
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "v"}).status_code == 200
        assert client.delete("/v1/adapters/demo").status_code == 200
        assert client.delete("/v1/adapters/demo").status_code == 404
        assert client.post("/generate", json={"prompt": "q", "model": "demo"}).status_code == 404
    with app_client() as client:  # no adapter directory: runtime loading is off
        r = client.post("/v1/adapters", json={"name": "demo", "path": str(root / "demo")})
        assert r.status_code == 403 and "adapter-dir" in r.json()["error"]["message"]


def test_adapter_errors_name_the_field_and_a_load_reports_the_resolved_folder(tmp_path):
    root = tmp_path / "adapters"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "adapter_config.json").write_text("{}")
    folder = str((root / "demo").resolve())

    def error(r, status):
        assert r.status_code == status, r.text
        return r.json()["error"]["param"], r.json()["error"]["message"]

    with app_client(adapter_dir=str(root)) as client:
        r = client.post("/v1/adapters", json={"name": "demo", "path": "demo"})
        assert r.status_code == 200 and r.json() == {"loaded": "demo", "path": folder}
        assert client.get("/v1/adapters").json() == {"adapters": [{"name": "demo", "path": folder}]}
        r = client.post("/v1/load_lora_adapter", json={"lora_name": "v", "lora_path": "./demo/"})
        assert r.json() == {"loaded": "v", "path": folder}  # the engine gets the resolved folder
        assert client.engine.adapters() == {"demo": folder, "v": folder}
        param, message = error(client.post("/v1/adapters", json={"name": "x", "path": "../x"}), 403)
        assert param == "path" and "'../x' resolves outside the adapter directory" in message
        param, message = error(client.post("/v1/adapters", json={"name": "x", "path": "missing"}), 400)
        assert (
            param == "path" and "'missing' is not a PEFT adapter folder (no adapter_config.json in" in message
        )
        param, message = error(client.post("/v1/adapters", json={"name": "x", "path": "a\u0000b"}), 400)
        assert param == "path" and "adapter path 'a\\x00b' is not a valid path" in message
        param, message = error(client.post("/v1/adapters", json={"name": "a/b", "path": "demo"}), 400)
        assert param == "name" and message == "adapter name 'a/b': use letters, digits, '.', '_' or '-'"
        param, message = error(client.post("/v1/adapters", json={"name": "fake", "path": "demo"}), 400)
        assert param == "name" and message == "'fake' is the base model's name; pick another"
        param, message = error(client.delete("/v1/adapters/fake"), 400)
        assert param == "name" and message == "'fake' is the base model, not an adapter"
    with app_client() as client:
        param, message = error(client.post("/v1/adapters", json={"name": "demo", "path": "demo"}), 403)
        assert param == "path"
        assert (
            "start the server with --adapter-dir DIR (or TUNEFORGE_ADAPTER_DIR) to allow folders" in message
        )


def test_batch_admission_limits_adapter_and_timeout():
    with app_client(max_batch_prompts=3) as client:
        ok = client.post("/generate/batch", json={"prompts": ["a", "b", "c"], "max_tokens": 2})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3  # exactly the limit is allowed
        r = client.post("/generate/batch", json={"prompts": ["a", "b", "c", "d"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"
        assert r.json()["error"]["message"] == "4 prompts in one batch; the limit is 3 (max_batch_prompts)"
        r = client.post("/generate/batch", json={"prompts": ["a", ""]})
        assert r.status_code == 400 and r.json()["error"]["message"] == "prompts[1] is empty"
        asyncio.run(client.engine.load_adapter("tuned", "/x"))
        r = client.post("/generate/batch", json={"prompts": ["a", "b"], "max_tokens": 2, "model": "tuned"})
        assert all(text.startswith(" tuned:") for text in r.json()["results"])  # the batch ran on the adapter
        assert "tuneforge_queue_depth 0.0" in client.get("/metrics").text  # every slot given back
    with app_client(FakeEngine(delay=3.0), request_timeout_s=0.1) as client:
        r = client.post("/generate/batch", json={"prompts": ["a", "b"], "max_tokens": 2})
        assert r.status_code == 504 and r.json()["partial_text"] == ""
        assert r.json()["error"]["message"] == "the batch did not finish within 0.1 s (request_timeout_s)"


def test_batch_time_to_first_token_is_the_time_the_batch_took():
    with app_client() as client:
        start = time.perf_counter()
        assert (
            client.post("/generate/batch", json={"prompts": ["a", "b"], "max_tokens": 2}).status_code == 200
        )
        elapsed = time.perf_counter() - start
        lines = client.get("/metrics").text.splitlines()
    observed = float(
        next(x for x in lines if x.startswith("tuneforge_time_to_first_token_seconds_sum")).split()[1]
    )
    assert 0 < observed <= elapsed  # one observation, taken inside the request


def test_metrics_count_requests_errors_tokens_and_latency():
    with app_client() as client:
        client.post("/generate", json={"prompt": "a", "max_tokens": 3})
        client.post("/generate", json={"prompt": "a", "max_tokens": 0})
        text = client.get("/metrics").text
    assert 'tuneforge_requests_total{route="/generate",status="200"} 1.0' in text
    assert 'tuneforge_requests_total{route="/generate",status="400"} 1.0' in text
    assert 'tuneforge_errors_total{kind="invalid_request_error",status="400"} 1.0' in text
    assert "tuneforge_generated_tokens_total 3.0" in text
    assert "tuneforge_time_to_first_token_seconds_count 1.0" in text
    assert 'tuneforge_request_latency_seconds_count{route="/generate"} 2.0' in text
    assert "tuneforge_queue_depth 0.0" in text


def test_openai_shapes_and_unknown_model():
    with app_client() as client:
        r = client.post("/v1/completions", json={"model": "fake", "prompt": ["a", "b c"], "max_tokens": 2})
        body = r.json()
        assert [c["index"] for c in body["choices"]] == [0, 1]
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": "fake",
                "messages": [{"role": "user", "content": "hi"}],
                "max_completion_tokens": 2,
            },
        ).json()
        assert (
            chat["choices"][0]["message"]["role"] == "assistant" and chat["usage"]["completion_tokens"] == 2
        )
        events = sse_json(
            client.post(
                "/v1/chat/completions",
                json={
                    "model": "fake",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ).text
        )
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert events[-2]["usage"]["completion_tokens"] == 2 and events[-1] == "[DONE]"
        missing = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "a"})
        assert missing.status_code == 404 and "gpt-4" in missing.json()["error"]["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_fake_server():
    """The app in a real uvicorn server (a thread), so a client can really go away mid-request."""
    engine = FakeEngine(delay=0.05)
    port = free_port()
    app = build_app(ServeSettings(model="fake"), engine_factory=lambda s: engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    yield base, engine
    server.should_exit = True
    thread.join(5)


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(live_fake_server, stream):
    base, engine = live_fake_server

    async def go_away():
        async with httpx.AsyncClient() as client:
            body = {"prompt": "a", "max_tokens": 60, "stream": stream}
            try:
                async with asyncio.timeout(0.4):
                    async with client.stream("POST", f"{base}/generate", json=body) as r:
                        async for _ in r.aiter_bytes():
                            pass
            except TimeoutError:
                pass

    asyncio.run(go_away())
    for _ in range(100):
        if engine.cancelled:
            break
        time.sleep(0.05)
    assert engine.cancelled == 1 and engine.finished == 0  # stopped after ~8 of 60 steps
    metrics = httpx.get(f"{base}/metrics").text
    assert "tuneforge_queue_depth 0.0" in metrics  # the slot was given back
