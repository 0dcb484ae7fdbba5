"""The real app with a fake engine, driven through Starlette's TestClient (lifespan included)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

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


def start_server(cmd: list[str], log: Path, timeout: float = 600, poll_s: float = 1.0):
    """A server command (with --port) started, its output in `log`, and ready (/ready says 200):
    (process, base URL). Fails the test with the log's last lines when it does not get there."""
    import pytest

    from tuneforge import command

    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    base = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
    try:
        command.wait_ready(f"{base}/ready", proc, timeout, log, poll_s=poll_s)
    except command.ServerNotReady as e:
        proc.kill()
        pytest.fail(str(e))
    return proc, base
