"""The real app with a fake engine, driven through Starlette's TestClient (lifespan included)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

from fake_engine import FakeEngine
from fastapi.testclient import TestClient

from tuneforge.serve.app import build_app
from tuneforge.serve.settings import ServeSettings


@contextmanager
def app_client(engine: FakeEngine | None = None, *, wait_ready: bool = True, **settings):
    engine = engine or FakeEngine()
    app = build_app(ServeSettings(**{"model": "fake", **settings}), engine_factory=lambda s: engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        if wait_ready:
            for _ in range(200):
                if client.get("/ready").status_code == 200:
                    break
                time.sleep(0.01)
        client.engine = engine
        client.app_ = app
        yield client


def sse_events(raw: str) -> list[str]:
    """Split an SSE body into its `data:` payloads, checking the framing of every event."""
    assert raw.endswith("\n\n"), f"stream does not end with a blank line: {raw[-40:]!r}"
    blocks = raw[:-2].split("\n\n")
    for block in blocks:
        assert block.startswith("data: ") and "\n" not in block, f"not an SSE data event: {block!r}"
    return [b[len("data: ") :] for b in blocks]


def sse_json(raw: str) -> list:
    return [json.loads(p) if p != "[DONE]" else "[DONE]" for p in sse_events(raw)]
