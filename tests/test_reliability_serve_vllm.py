"""The server with the real vLLM engine (CPU build, embedded default) when an adapter is unloaded under
traffic and when the engine process is killed (issue 14, items 1 and 6).

    pytest -m "reliability and vllm" tests/test_reliability_serve_vllm.py

One `tuneforge serve` process for the module, with `--engine-restarts 1`: the tests run in order, and
the module starts an engine twice in all (the server's start and its one restart). First an adapter is
unloaded while streams use it; then vLLM's EngineCore process is killed (SIGKILL) with streams in
flight and the server restarts it, adapters reloaded; then it is killed again, and with no restart
left the server stays down and says so. The scripted-engine tests of the same guarantees, and of the
races: tests/test_reliability_serve.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from serve_client import sse_json as sse_data
from serve_client import start_server
from test_serve_app import free_port
from test_serve_real import CHAT, random_adapter

from tuneforge import command
from tuneforge.command import stop_process

pytestmark = [pytest.mark.reliability, pytest.mark.vllm, pytest.mark.slow]

LEAKS = ("stack trace", "EngineCore", "Traceback")  # vLLM's words and internals: never sent to a client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("vllm")
    from tuneforge.models.resolve import resolve_model

    model = resolve_model("smollm2-135m-instruct").path
    root = tmp_path_factory.mktemp("adapters")
    random_adapter(model, root / "first")
    random_adapter(model, root / "second")
    port = free_port()
    cmd = [
        sys.executable, "-m", "tuneforge.cli", "serve", model, "inference.max_model_len=512",
        "--engine", "vllm", "--port", str(port), "--served-name", "base",
        "--adapter", f"first={root / 'first'}", "--adapter-dir", str(root), "--engine-restarts", "1",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, base = start_server(cmd, log, timeout=900, poll_s=0.5)
    try:
        yield {"base": base, "proc": proc, "log": log}
    finally:
        stop_process(proc)


def wait_ready(base: str, proc, log: Path, timeout: float = 900, watch=None) -> None:
    try:
        command.wait_ready(f"{base}/ready", proc, timeout, log, poll_s=0.5, watch=watch)
    except command.ServerNotReady as e:
        pytest.fail(str(e))


def sse_json(raw: str) -> list:
    """The events of an SSE body (comment lines such as keep-alive pings skipped)."""
    return sse_data("".join(block + "\n\n" for block in raw.split("\n\n") if block and block[0] != ":"))


def engine_processes(pid: int) -> dict[int, str]:
    """vLLM's processes under the server: its EngineCore and the EngineCore's workers, pid -> name."""
    found = {}
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if p.name().startswith("VLLM::") and p.status() != psutil.STATUS_ZOMBIE:
                found[p.pid] = p.name()
        except psutil.NoSuchProcess:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_engine_core(server) -> dict[int, str]:
    """SIGKILL the server's EngineCore process; returns vLLM's processes as they were."""
    processes = engine_processes(server["proc"].pid)
    cores = [pid for pid, name in processes.items() if name == "VLLM::EngineCore"]
    assert len(cores) == 1, processes
    os.kill(cores[0], signal.SIGKILL)
    return processes


class InFlight:
    """A request in a thread: `started` is set at its first event (or its end); `result()` gives
    (status, headers, body) once it has ended."""

    def __init__(self, pool, url: str, body: dict):
        self.started = threading.Event()
        self.future = pool.submit(self._run, url, body)

    def _run(self, url: str, body: dict):
        raw = ""
        with httpx.stream("POST", url, json=body, timeout=600) as r:
            for chunk in r.iter_text():
                raw += chunk
                if "data: " in raw:
                    self.started.set()
        self.started.set()
        return r.status_code, r.headers, raw

    def result(self, timeout: float = 120):
        return self.future.result(timeout)


def generate(server, model: str, max_tokens: int = 12, **extra) -> httpx.Response:
    body = {"prompt": CHAT, "model": model, "max_tokens": max_tokens, "temperature": 0, "stream": False}
    return httpx.post(server["base"] + "/generate", json=body | extra, timeout=600)


def metrics(server) -> str:
    return httpx.get(server["base"] + "/metrics").text


def queue_depth(server) -> float:
    line = next(x for x in metrics(server).splitlines() if x.startswith("tuneforge_queue_depth "))
    return float(line.split()[1])


def test_unloading_an_adapter_under_traffic_lets_its_requests_finish(server):
    base = server["base"]
    assert httpx.post(base + "/v1/adapters", json={"name": "second", "path": "second"}).status_code == 200
    wanted = generate(server, "second", 40, ignore_eos=True)
    assert wanted.status_code == 200, wanted.text
    body = {"prompt": CHAT, "model": "second", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        flights = [InFlight(pool, base + "/generate", body) for _ in range(3)]
        for f in flights:
            assert f.started.wait(300)
        unload = pool.submit(httpx.delete, base + "/v1/adapters/second", timeout=600)
        deadline = time.time() + 30
        while "second" in str(httpx.get(base + "/v1/models").json()):  # the unload has begun
            assert time.time() < deadline and not unload.done()
            time.sleep(0.05)
        late = generate(server, "second")
        assert late.status_code == 404, late.text
        assert (
            late.json()["error"]["message"] == "the adapter `second` is being unloaded; served: base, first"
        )
        assert generate(server, "base", 4).status_code == 200  # other requests go on meanwhile
        r = unload.result(600)
        assert r.status_code == 200 and r.json() == {"unloaded": "second", "waited_for": 3}, r.text
        for f in flights:  # every request that used it finished, with the adapter applied to the end
            status, _, raw = f.result(10)
            events = sse_json(raw)
            assert status == 200 and events[-1]["type"] == "done", raw[-500:]
            assert "".join(e["text"] for e in events[:-1]) == wanted.json()["text"]
    gone = generate(server, "second")
    assert gone.status_code == 404 and "does not exist" in gone.json()["error"]["message"]
    assert [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]] == ["base", "first"]


def test_killing_the_engine_process_under_load_ends_streams_then_the_server_restarts_it(server):
    base, proc = server["base"], server["proc"]
    assert httpx.post(base + "/v1/adapters", json={"name": "third", "path": "second"}).status_code == 200
    models = httpx.get(base + "/ready").json()["models"]
    assert models == ["base", "first", "third"]
    answers = {m: generate(server, m).json()["text"] for m in models}
    assert answers["base"] == "The capital of France is Paris."
    long = {"prompt": CHAT, "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    chat = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 400,
            "ignore_eos": True, "stream": True}  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        flights = [
            InFlight(pool, base + "/generate", long),
            InFlight(pool, base + "/generate", long | {"model": "first"}),
            InFlight(pool, base + "/v1/chat/completions", chat),
            InFlight(pool, base + "/generate", long | {"model": "third", "stream": False}),
        ]
        for f in flights[:3]:
            assert f.started.wait(300)
        deadline = time.time() + 60
        while queue_depth(server) < 4:  # the request without a stream is in the engine too
            assert time.time() < deadline
            time.sleep(0.1)
        before = kill_engine_core(server)
        killed = time.monotonic()
        results = [f.result(120) for f in flights]
    ended = time.monotonic() - killed
    print(f"the requests in flight ended {ended:.1f} s after the kill")
    assert ended < 30  # nothing hangs
    for status, _, raw in results[:2]:  # tokens, then one error event in our words; no done event
        events = sse_json(raw)
        error = events[-1]
        assert status == 200 and error["type"] == "error", raw[-500:]
        assert all(e["type"] == "token" for e in events[:-1])
        assert error["error"]["code"] == 503 and error["error"]["type"] == "engine_restarting"
        assert error["partial_text"] == "".join(e["text"] for e in events[:-1]) != ""
        assert error["error"]["message"].startswith("the engine stopped during this request (")
    status, _, raw = results[2]  # OpenAI's stream: one error event and no [DONE]
    events = sse_json(raw)
    assert status == 200 and "[DONE]" not in events and events[-1]["error"]["code"] == 503
    status, headers, raw = results[3]  # without a stream: 503 and what was generated, never a 200
    assert status == 503 and headers["retry-after"] == "5" and '"partial_text"' in raw, raw
    assert not [w for _, _, raw in results for w in LEAKS if w in raw]

    r = generate(server, "base")  # while it restarts: 503 with Retry-After, for requests and /ready
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    assert r.json()["error"]["type"] == "engine_restarting"
    ready = httpx.get(base + "/ready")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
    assert ready.json()["status"] == "restarting"
    health = httpx.get(base + "/health")
    assert health.status_code == 200 and health.json()["engine"] == "restarting"

    new_cores: set[int] = set()

    def old_engine_released_before_a_new_one_starts():
        now = engine_processes(proc.pid)
        fresh = {pid for pid, name in now.items() if name == "VLLM::EngineCore" and pid not in before}
        if fresh - new_cores:
            assert not [pid for pid in before if alive(pid)], f"old {before} still alive beside {now}"
            new_cores.update(fresh)

    started = time.monotonic()
    wait_ready(base, proc, server["log"], watch=old_engine_released_before_a_new_one_starts)
    print(f"restarted in {time.monotonic() - started:.0f} s")
    assert (
        len(new_cores) == 1
        and [n for n in engine_processes(proc.pid).values()].count("VLLM::EngineCore") == 1
    )
    ready = httpx.get(base + "/ready").json()
    assert ready["models"] == models and ready["restarts"] == 1 and ready["restarts_left"] == 0
    warmups = [line for line in server["log"].read_text().splitlines() if "warm-up: " in line]
    assert len(warmups) == 2, warmups  # a first generation before ready, at the start and after the restart
    assert {m: generate(server, m).json()["text"] for m in models} == answers  # adapters reloaded
    text = metrics(server)
    assert 'tuneforge_engine_restarts_total{outcome="ok"} 1.0' in text
    assert 'tuneforge_engine_state{tuneforge_engine_state="ready"} 1.0' in text
    assert httpx.get(base + "/health").json() == {"status": "ok", "engine": "ready"}


def test_with_no_restart_left_the_server_stays_down_and_says_so(server):
    base, proc = server["base"], server["proc"]
    long = {"prompt": CHAT, "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flight = InFlight(pool, base + "/generate", long)
        assert flight.started.wait(300)
        before = kill_engine_core(server)
        status, _, raw = flight.result(60)
    error = sse_json(raw)[-1]
    assert status == 200 and error["type"] == "error" and error["error"]["type"] == "engine_dead"
    assert error["error"]["message"].endswith(
        "no restart is left (restarts used: 1 of 1, engine_restarts): this server cannot generate; "
        "restart it or send the request to another replica"
    )
    health = httpx.get(base + "/health")
    assert health.status_code == 503 and health.json()["status"] == "dead"
    ready = httpx.get(base + "/ready")
    assert ready.status_code == 503 and "retry-after" not in ready.headers  # retrying here cannot help
    assert ready.json()["status"] == "dead"
    r = generate(server, "base")
    assert (
        r.status_code == 503 and "retry-after" not in r.headers and r.json()["error"]["type"] == "engine_dead"
    )
    assert not [w for w in LEAKS if w in raw + r.text + ready.text + health.text]
    deadline = time.time() + 60
    while [pid for pid in before if alive(pid)]:  # the stopped engine is released all the same
        assert time.time() < deadline, before
        time.sleep(0.5)
    assert proc.poll() is None and 'tuneforge_engine_state{tuneforge_engine_state="dead"} 1.0' in metrics(
        server
    )
