"""Errors as HTTP, in one place (tuneforge.serve.errors), and what a new user ran into: the API docs behind
the key, a broken JSON body named as such, /v1/models not answering 200 before the model can serve."""

from __future__ import annotations

import threading
import time

import pytest
from fake_engine import FakeEngine
from fastapi.testclient import TestClient
from serve_client import app_client

from tuneforge.engines.base import (
    AdapterNotFound,
    EngineDead,
    EngineError,
    EngineOutOfMemory,
    InvalidRequest,
    PromptTooLong,
)
from tuneforge.serve.app import build_app
from tuneforge.serve.errors import (
    Forbidden,
    GenerationTimeout,
    HttpError,
    NotReady,
    Overloaded,
    Unauthorized,
    http_status,
)
from tuneforge.serve.settings import ServeSettings


@pytest.mark.parametrize(
    "error, status",
    [
        (InvalidRequest("x"), 400), (PromptTooLong("x"), 400), (AdapterNotFound("x"), 404),
        (EngineOutOfMemory("x"), 503), (EngineDead("x"), 503), (EngineError("x"), 500),
        (Unauthorized("x"), 401), (Forbidden("x"), 403), (Overloaded("x"), 429), (NotReady("x"), 503),
        (GenerationTimeout("x", ""), 504), (HttpError(405, "x"), 405),
    ],
)  # fmt: skip
def test_each_error_has_one_status_and_engine_errors_know_no_http(error, status):
    assert http_status(error) == status
    if not isinstance(error, (Unauthorized, Forbidden, Overloaded, NotReady, GenerationTimeout, HttpError)):
        assert not hasattr(error, "status")  # engines know nothing of HTTP


def test_with_an_api_key_the_schema_and_docs_need_it_too():
    with app_client(api_key="s3cret") as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            r = client.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            ok = client.get(path, headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200, path
        schema = client.get("/openapi.json", headers={"authorization": "Bearer s3cret"}).json()
        assert "/generate" in schema["paths"] and "/openapi.json" not in schema["paths"]
        assert client.get("/health").status_code == 200  # the probes stay open
    with app_client() as client:  # no key: open as before
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


@pytest.mark.parametrize("body, where", [(b'{"prompt": "hi",', 16), (b"not json", 0), (b'{"a": 1} x', 9)])
def test_a_body_that_is_not_json_is_named_with_where_it_broke(body, where):
    with app_client() as client:
        r = client.post("/generate", content=body, headers={"content-type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "body"
    assert error["message"].startswith("the request body is not valid JSON: ")
    assert error["message"].endswith(f"at character {where}")


def test_models_is_503_with_retry_after_until_the_model_can_serve():
    gate = threading.Event()

    def slow_factory(settings):
        gate.wait(10)
        return FakeEngine()

    with TestClient(build_app(ServeSettings(model="fake"), engine_factory=slow_factory)) as client:
        r = client.get("/v1/models")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["type"] == "model_not_loaded"
        gate.set()
        for _ in range(200):
            if client.get("/v1/models").status_code == 200:
                break
            time.sleep(0.02)
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["fake"]
