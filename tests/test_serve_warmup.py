"""Warm-up before ready (settings.warmup): a first generation runs after the engine starts and before
/ready says ready, so the first client does not wait for kernels compiled on first use."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from fake_engine import FakeEngine
from fastapi.testclient import TestClient

from tuneforge.engines.base import EngineOutOfMemory
from tuneforge.serve.app import build_app
from tuneforge.serve.settings import ServeSettings, load_settings


class GatedWarmup(FakeEngine):
    """Its warm-up waits for `gate`, then takes 0.25 s by its own count or raises `warm_error`."""

    def __init__(self, gate: threading.Event, warm_error: Exception | None = None, **kw):
        super().__init__(**kw)
        self.gate, self.warm_error, self.shut_down = gate, warm_error, False

    async def warm_up(self) -> float:
        self.warmups += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        if self.warm_error is not None:
            raise self.warm_error
        return 0.25

    async def shutdown(self) -> None:
        self.shut_down = True


def until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def served(engine: FakeEngine, **settings) -> TestClient:
    return TestClient(build_app(ServeSettings(model="fake", **settings), engine_factory=lambda s: engine))


def test_ready_waits_for_the_warm_up_and_no_client_request_runs_before_it(caplog):
    caplog.set_level(logging.INFO, logger="tuneforge")
    gate = threading.Event()
    engine = GatedWarmup(gate)
    with served(engine) as client:
        until(lambda: engine.warmups == 1)
        ready = client.get("/ready")  # the engine is up, its warm-up is not done: still loading
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        r = client.post("/generate", json={"prompt": "hi", "stream": False, "max_tokens": 4})
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        assert engine.started == 0  # that request never reached the engine
        gate.set()
        until(lambda: client.get("/ready").status_code == 200)
        r = client.post("/generate", json={"prompt": "hi", "stream": False, "max_tokens": 4})
        assert r.status_code == 200 and engine.started == 1
        assert engine.warmups == 1  # once per engine start, not per request
    assert "warm-up: 0.25 s for a first generation" in caplog.text


def test_with_warmup_off_the_server_is_ready_without_generating():
    engine = FakeEngine()
    with served(engine, warmup=False) as client:
        until(lambda: client.get("/ready").status_code == 200)
        assert engine.warmups == 0


def test_warmup_is_on_by_default_and_turned_off_by_flag_or_environment(monkeypatch):
    from tuneforge.cli import build_parser
    from tuneforge.command import parse
    from tuneforge.serve.cli import settings_from_args

    assert settings_from_args(parse(build_parser(), ["serve"])).warmup is True
    assert settings_from_args(parse(build_parser(), ["serve", "--no-warmup"])).warmup is False
    monkeypatch.setenv("TUNEFORGE_WARMUP", "false")
    assert load_settings().warmup is False
    assert settings_from_args(parse(build_parser(), ["serve"])).warmup is False  # no flag: the environment's


@pytest.mark.parametrize(
    "error",
    [EngineOutOfMemory("CUDA out of memory while compiling"), RuntimeError("Triton compilation failed")],
)
def test_a_warm_up_that_fails_is_a_failed_start_named_on_health_and_the_engine_is_released(error):
    gate = threading.Event()
    gate.set()
    engine = GatedWarmup(gate, warm_error=error)
    with served(engine) as client:
        until(lambda: client.get("/health").status_code == 503)
        health = client.get("/health").json()
        assert health["engine"] == "failed" and str(error) in health["error"]
        assert client.get("/ready").status_code == 503
        r = client.post("/generate", json={"prompt": "hi", "stream": False, "max_tokens": 4})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
        assert engine.shut_down and engine.started == 0
