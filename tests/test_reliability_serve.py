"""The server when its engine dies, and adapters changed under traffic (issue 14, items 1 and 6), with a
scripted engine behind the real app in a real uvicorn server (a thread), driven over HTTP by httpx.

    pytest -m reliability tests/test_reliability_serve.py

The scripted engine dies as vLLM's does when its engine process is killed: it reports itself unhealthy
and its streams in flight fail with EngineDead, in vLLM's words (which must never reach a client). Its
adapter loads take time and, like vLLM's, two loads of one name that overlap leave two copies in the
engine. The same guarantees with the real vLLM engine: tests/test_reliability_serve_vllm.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fake_engine import FakeEngine
from serve_client import sse_json
from test_serve_app import free_port

from tuneforge.engines.base import EngineDead, InvalidRequest
from tuneforge.serve.app import build_app
from tuneforge.serve.settings import ServeSettings

pytestmark = pytest.mark.reliability

VLLM_WORDS = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class MortalEngine(FakeEngine):
    """A FakeEngine that can die, whose adapter loads take `load_delay` seconds, and which counts the
    adapter copies it holds (`resident`, one entry per copy) as vLLM does."""

    def __init__(self, log: list[str], n: int, load_delay: float = 0.0, **kw):
        super().__init__(**{"max_model_len": 1024, **kw})
        self.log, self.n, self.load_delay = log, n, load_delay
        self.resident: list[str] = []
        self.loads_begun = 0

    def die(self) -> None:
        self.healthy = False
        self.log.append(f"died {self.n}")

    async def stream(self, prompt, sampling, adapter=None):
        async for chunk in super().stream(prompt, sampling, adapter):
            if not self.healthy:
                raise EngineDead(VLLM_WORDS)
            if adapter is not None and adapter not in self._adapters:  # its weights went mid-request
                raise RuntimeError(f"LoRA weights for '{adapter}' are not loaded")
            yield chunk
        if not self.healthy:
            raise EngineDead(VLLM_WORDS)

    async def complete_batch(self, prompts, sampling, adapter=None):
        done = await super().complete_batch(prompts, sampling, adapter)
        if not self.healthy:
            raise EngineDead(VLLM_WORDS)
        return done

    async def load_adapter(self, name: str, path: str) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise InvalidRequest(f"cannot load adapter '{name}' from {path}: no adapter there", param="path")
        known = name in self._adapters  # read before the wait, as VLLMEngine.load_adapter picks its id
        self.loads_begun += 1
        await asyncio.sleep(self.load_delay)
        if not self.healthy:
            raise EngineDead(VLLM_WORDS)
        if not known:
            self.resident.append(name)
        self._adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        await super().unload_adapter(name)
        self.resident.remove(name)

    async def shutdown(self) -> None:
        self.log.append(f"shutdown {self.n}")


class Factory:
    """Starts MortalEngines and records each start, failure and shutdown in order. Restarts (not the first
    start) wait for `gate` when one is given; the next `fail` restarts raise."""

    def __init__(self, gate: threading.Event | None = None, fail: int = 0, **engine_kw):
        self.gate, self.fail, self.engine_kw = gate, fail, engine_kw
        self.log: list[str] = []
        self.engines: list[MortalEngine] = []
        self.calls: list[float] = []  # when each start began

    def __call__(self, settings) -> MortalEngine:
        self.calls.append(time.monotonic())
        if self.engines and self.gate is not None:
            assert self.gate.wait(30)
        if self.engines and self.fail:
            self.fail -= 1
            self.log.append("start failed")
            raise RuntimeError("cannot allocate the KV cache")
        engine = MortalEngine(self.log, len(self.engines) + 1, **self.engine_kw)
        self.engines.append(engine)
        self.log.append(f"start {engine.n}")
        return engine

    @property
    def engine(self) -> MortalEngine:
        return self.engines[-1]


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    for name in ("demo", "other", "spare"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
    return tmp_path


@contextmanager
def live(factory: Factory, **settings):
    """The app in a real uvicorn server (a thread), ready; yields its base URL."""
    settings = {"model": "fake", "engine_restart_backoff_s": 0.01, **settings}
    app = build_app(ServeSettings(**settings), engine_factory=factory)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{base}/ready").status_code == 200, "the server to be ready", base=base)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition, what: str, timeout: float = 10, base: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class InFlight:
    """A streaming request in a thread: `started` is set at its first event; `result()` gives (status,
    headers, body) once it has ended."""

    def __init__(self, pool, base: str, body: dict, path: str = "/generate"):
        self.started = threading.Event()
        self.ended_at: float | None = None
        self.future = pool.submit(self._run, base + path, body)

    def _run(self, url: str, body: dict):
        raw = ""
        with httpx.stream("POST", url, json=body, timeout=30) as r:
            for chunk in r.iter_text():
                raw += chunk
                if "data: " in raw:
                    self.started.set()
        self.started.set()
        self.ended_at = time.monotonic()
        return r.status_code, r.headers, raw

    def result(self, timeout: float = 20):
        return self.future.result(timeout)


def post(base: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=30)


def metric(base: str, line_start: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the engine dies -----------------------------------------------------------------------------------
def test_streams_in_flight_end_with_an_error_event_in_our_words_then_the_engine_serves_again(adapter_dir):
    factory = Factory(delay=0.02)
    settings = {"adapters": {"demo": str(adapter_dir / "demo")}, "adapter_dir": str(adapter_dir)}
    with live(factory, **settings) as base, concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert post(base, "/v1/adapters", {"name": "other", "path": "other"}).status_code == 200
        before = {m: post(base, "/generate", {"prompt": "q", "max_tokens": 5, "stream": False, "model": m})
                  for m in ("fake", "demo", "other")}  # fmt: skip
        body = {"prompt": "p", "max_tokens": 200}
        flights = [
            InFlight(pool, base, body | {"model": "demo"}),
            InFlight(pool, base, body),
            InFlight(pool, base, {"model": "fake", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 200, "stream": True}, "/v1/chat/completions"),
            InFlight(pool, base, body | {"stream": False}),
        ]  # fmt: skip
        for f in flights[:3]:
            assert f.started.wait(10)
        wait_for(lambda: factory.engine.started == len(before) + 4, "every request to reach the engine")
        factory.engine.die()
        results = [f.result() for f in flights]
        for status, _, raw in results[:2]:  # tuneforge's stream: tokens, then one error event, no done
            assert status == 200
            events = sse_json(raw)
            error = events[-1]
            assert error["type"] == "error" and all(e["type"] == "token" for e in events[:-1])
            assert error["error"]["code"] == 503 and error["error"]["type"] == "engine_restarting"
            assert error["partial_text"] == "".join(e["text"] for e in events[:-1]) != ""
            assert error["error"]["message"].startswith("the engine stopped during this request (")
        status, _, raw = results[2]  # OpenAI's stream: one error event, no [DONE]
        events = sse_json(raw)
        assert status == 200 and "[DONE]" not in events and events[-1]["error"]["code"] == 503
        status, headers, raw = results[3]  # no stream: 503 with what was generated, never 200
        assert status == 503 and headers["retry-after"] == "5" and '"partial_text"' in raw
        assert all(VLLM_WORDS not in raw and "stack trace" not in raw for _, _, raw in results)

        wait_for(lambda: httpx.get(base + "/ready").status_code == 200, "the restarted engine")
        # the stopped engine was released before the new one started, and only one start was needed
        assert factory.log == ["start 1", "died 1", "shutdown 1", "start 2"]
        ready = httpx.get(base + "/ready").json()
        assert ready["models"] == ["fake", "demo", "other"] and ready["restarts"] == 1
        assert ready["restarts_left"] == 2
        assert factory.engine.adapters() == {"demo": str(adapter_dir / "demo"),
                                             "other": str((adapter_dir / "other").resolve())}  # fmt: skip
        for m, r in before.items():  # the same answers as before, adapters included
            again = post(base, "/generate", {"prompt": "q", "max_tokens": 5, "stream": False, "model": m})
            assert again.status_code == 200 and again.json()["text"] == r.json()["text"]
        assert httpx.get(base + "/health").json() == {"status": "ok", "engine": "ready"}
        assert metric(base, 'tuneforge_engine_restarts_total{outcome="ok"}') == 1
        assert metric(base, 'tuneforge_engine_state{tuneforge_engine_state="ready"}') == 1


def test_while_it_restarts_new_requests_get_503_with_retry_after_and_the_probes_say_so(adapter_dir):
    gate = threading.Event()
    factory = Factory(gate=gate)
    with live(factory, adapter_dir=str(adapter_dir)) as base:
        factory.engine.die()
        try:
            ready = httpx.get(base + "/ready")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
            assert ready.json()["status"] == "restarting"
            health = httpx.get(base + "/health")  # alive: it is recovering by itself
            assert health.status_code == 200 and health.json()["engine"] == "restarting"
            wait_for(lambda: len(factory.calls) == 2, "the restart to begin")
            assert httpx.get(base + "/ready").json()["restarts_left"] == 2
            for method, path, body in [
                ("POST", "/generate", {"prompt": "a", "max_tokens": 3}),
                ("POST", "/generate", {"prompt": "a", "max_tokens": 3, "stream": False}),
                ("POST", "/generate/batch", {"prompts": ["a", "b"], "max_tokens": 3}),
                ("POST", "/v1/completions", {"model": "fake", "prompt": "a"}),
                ("GET", "/v1/models", None),
                ("POST", "/v1/adapters", {"name": "demo", "path": "demo"}),
            ]:
                r = httpx.request(method, base + path, json=body)
                assert r.status_code == 503 and r.headers["retry-after"] == "5", (path, r.text)
                error = r.json()["error"]
                assert error["type"] == "engine_restarting", path
                assert error["message"] == (
                    "the engine stopped; the server is starting a new engine (restarts used: 1 of 3, "
                    "engine_restarts): retry in a few seconds"
                )
            assert metric(base, 'tuneforge_engine_state{tuneforge_engine_state="restarting"}') == 1
        finally:
            gate.set()
        wait_for(lambda: httpx.get(base + "/ready").status_code == 200, "the restarted engine")
        assert post(base, "/generate", {"prompt": "a", "max_tokens": 3, "stream": False}).status_code == 200


@pytest.mark.parametrize("restarts", [0, 2])
def test_restarts_are_bounded_with_backoff_then_the_server_stays_down_and_says_so(restarts):
    factory = Factory(fail=restarts, delay=0.05)
    with (
        live(factory, engine_restarts=restarts, engine_restart_backoff_s=0.1) as base,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        flight = InFlight(pool, base, {"prompt": "a", "max_tokens": 50})
        assert flight.started.wait(10)
        factory.engine.die()
        error = sse_json(flight.result()[2])[-1]["error"]
        wait_for(lambda: httpx.get(base + "/health").status_code == 503, "the server to give up", 20)
        assert factory.log == ["start 1", "died 1", "shutdown 1", *["start failed"] * restarts]
        gaps = [b - a for a, b in zip(factory.calls[1:], factory.calls[2:], strict=False)]
        assert all(gap >= 0.2 for gap in gaps)  # 0.1 s, then 0.2 s: the wait doubles
        health = httpx.get(base + "/health").json()
        assert health["status"] == "dead" and health["engine"] == "dead" and health["restarts"] == restarts
        ready = httpx.get(base + "/ready")
        assert ready.status_code == 503 and "retry-after" not in ready.headers  # nothing is under way
        assert ready.json()["status"] == "dead" and ready.json()["restarts_left"] == 0
        r = post(base, "/generate", {"prompt": "a", "max_tokens": 3, "stream": False})
        assert r.status_code == 503 and "retry-after" not in r.headers
        message = r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "engine_dead" and "restart it or send the request" in message
        if restarts:
            assert error["type"] == "engine_restarting"  # the stream ended while restarts were left
            assert "restart 2 failed (RuntimeError: cannot allocate the KV cache)" in message
            assert metric(base, 'tuneforge_engine_restarts_total{outcome="failed"}') == restarts
        else:
            assert error["type"] == "engine_dead" and error["message"].endswith(
                "no restart is left (restarts used: 0 of 0, engine_restarts): this server cannot generate; "
                "restart it or send the request to another replica"
            )
        assert metric(base, 'tuneforge_engine_state{tuneforge_engine_state="dead"}') == 1


def test_a_stream_whose_engine_dies_before_its_first_token_is_a_503_never_an_empty_200():
    factory = Factory(delay=1.5)  # the first token comes long after both requests are in
    with live(factory) as base, concurrent.futures.ThreadPoolExecutor(2) as pool:
        body = {"prompt": "a", "max_tokens": 5, "model": "fake", "stream": True}
        flights = [InFlight(pool, base, body), InFlight(pool, base, body, "/v1/completions")]
        wait_for(lambda: factory.engine.started == 2, "both requests to reach the engine")
        factory.engine.die()
        for status, headers, raw in (f.result() for f in flights):
            assert status == 503 and headers["retry-after"] == "5"
            assert '"engine_restarting"' in raw and VLLM_WORDS not in raw


def test_an_adapter_that_cannot_be_reloaded_is_named_and_the_others_serve(adapter_dir):
    factory = Factory()
    with live(factory, adapter_dir=str(adapter_dir)) as base:
        for name in ("demo", "other"):
            assert post(base, "/v1/adapters", {"name": name, "path": name}).status_code == 200
        (adapter_dir / "other" / "adapter_config.json").unlink()  # its folder changed since
        factory.engine.die()
        wait_for(lambda: httpx.get(base + "/ready").status_code == 200, "the restarted engine")
        ready = httpx.get(base + "/ready").json()
        assert ready["models"] == ["fake", "demo"] and list(ready["adapters_not_reloaded"]) == ["other"]
        assert post(base, "/generate", {"prompt": "a", "stream": False, "model": "demo"}).status_code == 200
        r = post(base, "/generate", {"prompt": "a", "stream": False, "model": "other"})
        assert r.status_code == 404
        assert r.json()["error"]["message"].startswith(
            "the adapter `other` was not loaded again after the engine restarted (cannot load adapter"
        )
        assert r.json()["error"]["message"].endswith("load it with POST /v1/adapters")


def test_an_adapter_load_that_meets_a_dying_engine_gets_a_503_not_a_hang(adapter_dir):
    factory = Factory(load_delay=600)  # a call that the dead engine never answers
    with (
        live(factory, adapter_dir=str(adapter_dir)) as base,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        load = pool.submit(post, base, "/v1/adapters", {"name": "demo", "path": "demo"})
        wait_for(lambda: factory.engine.loads_begun == 1, "the load to begin")
        factory.engine.die()
        r = load.result(10)
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["error"]["type"] == "engine_restarting"


# -- adapters under traffic ----------------------------------------------------------------------------
def test_unloading_an_adapter_lets_the_requests_using_it_finish(adapter_dir):
    factory = Factory(delay=0.05)
    with (
        live(factory, adapter_dir=str(adapter_dir)) as base,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        assert post(base, "/v1/adapters", {"name": "demo", "path": "demo"}).status_code == 200
        body = {"prompt": "p", "max_tokens": 60, "model": "demo"}  # 3 s each
        flights = [
            InFlight(pool, base, body),
            InFlight(pool, base, body | {"stream": True}, "/v1/completions"),
        ]
        for f in flights:
            assert f.started.wait(10)
        unload = pool.submit(httpx.delete, base + "/v1/adapters/demo", timeout=30)
        wait_for(lambda: "demo" not in str(httpx.get(base + "/v1/models").json()), "the unload to begin")
        late = post(base, "/generate", {"prompt": "p", "max_tokens": 3, "stream": False, "model": "demo"})
        assert late.status_code == 404  # new requests: refused, with the reason
        assert late.json()["error"]["message"] == "the adapter `demo` is being unloaded; served: fake"
        assert (
            post(base, "/generate", {"prompt": "p", "max_tokens": 3, "stream": False}).status_code == 200
        )  # base goes on
        r = unload.result(20)
        assert r.status_code == 200 and r.json() == {"unloaded": "demo", "waited_for": 2}
        assert r.elapsed.total_seconds() > 0.3  # it waited for the requests
        events = sse_json(flights[0].result()[2])
        assert events[-1]["type"] == "done" and events[-1]["completion_tokens"] == 60
        assert sse_json(flights[1].result()[2])[-1] == "[DONE]"
        assert factory.engine.adapters() == {} and factory.engine.resident == []
        gone = post(base, "/generate", {"prompt": "p", "max_tokens": 3, "stream": False, "model": "demo"})
        assert gone.status_code == 404 and "does not exist" in gone.json()["error"]["message"]
        assert httpx.delete(base + "/v1/adapters/demo").status_code == 404


def test_two_loads_of_one_name_racing_leave_exactly_one_adapter(adapter_dir):
    factory = Factory(load_delay=0.2)
    with (
        live(factory, adapter_dir=str(adapter_dir)) as base,
        concurrent.futures.ThreadPoolExecutor(6) as pool,
    ):
        same = list(
            pool.map(lambda _: post(base, "/v1/adapters", {"name": "demo", "path": "demo"}), range(4))
        )
        assert [r.status_code for r in same] == [200] * 4
        assert factory.engine.resident == ["demo"]  # one copy in the engine, not four
        bodies = [{"name": "x", "path": "other"}, {"name": "x", "path": "spare"}]
        raced = list(pool.map(lambda b: post(base, "/v1/adapters", b), bodies))
        assert sorted(r.status_code for r in raced) == [200, 409]
        won = next(r for r in raced if r.status_code == 200).json()["path"]
        lost = next(r for r in raced if r.status_code == 409).json()["error"]
        assert lost["param"] == "name" and lost["message"] == (
            f"an adapter named 'x' is already loaded from {won}: unload it first (DELETE /v1/adapters/x) "
            "or load this one under another name"
        )
        assert factory.engine.resident == ["demo", "x"] and factory.engine.adapters()["x"] == won
        listed = httpx.get(base + "/v1/adapters").json()["adapters"]
        assert [a["name"] for a in listed] == ["demo", "x"]
        # a load and an unload of one name racing: one after the other, never a half-loaded adapter
        begun = factory.engine.loads_begun
        load = pool.submit(post, base, "/v1/adapters", {"name": "y", "path": "spare"})
        wait_for(lambda: factory.engine.loads_begun > begun, "the load to begin")
        unload = pool.submit(httpx.delete, base + "/v1/adapters/y")
        assert load.result(10).status_code == 200 and unload.result(10).status_code == 200
        assert "y" not in factory.engine.adapters() and factory.engine.resident == ["demo", "x"]
