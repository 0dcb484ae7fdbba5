"""A small real server whose failures are known in advance, for testing the benchmark client.

    python tests/servers/flaky_openai.py --port 8123 --fail-every 5 --error-every 3 --tokens 8

Streams /v1/completions (OpenAI style: text chunks, a usage chunk, `data: [DONE]`) and /generate
(tuneforge style: token events, then a done event). Each endpoint numbers its requests 1, 2, 3, ...:
request n answers HTTP 503 when n is a multiple of --fail-every; otherwise, when n is a multiple of
--error-every, the stream sends two tokens and then an in-band error event under HTTP 200, and closes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def build_app(fail_every: int, error_every: int, tokens: int, delay_s: float) -> FastAPI:
    app = FastAPI()
    counters = {"completions": itertools.count(1), "generate": itertools.count(1)}

    def sse(obj) -> str:
        return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"

    def fate(endpoint: str) -> str:
        n = next(counters[endpoint])
        if n % fail_every == 0:
            return "503"
        return "stream_error" if n % error_every == 0 else "ok"

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        outcome = fate("completions")
        if outcome == "503":
            return JSONResponse({"error": {"message": "overloaded", "type": "overloaded"}}, 503)
        n = min(int(body.get("max_tokens", tokens)), tokens)

        async def events():
            for i in range(n):
                if outcome == "stream_error" and i == 2:
                    yield sse({"error": {"message": "engine failed", "type": "internal_error", "code": 500}})
                    return
                await asyncio.sleep(delay_s)
                yield sse(
                    {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": f" t{i}"}]}
                )
            yield sse({"id": "c", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n}})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/generate")
    async def generate(request: Request):
        body = await request.json()
        outcome = fate("generate")
        if outcome == "503":
            return JSONResponse({"error": {"message": "overloaded", "type": "overloaded"}}, 503)
        n = min(int(body.get("max_tokens", tokens)), tokens)

        async def events():
            for i in range(n):
                if outcome == "stream_error" and i == 2:
                    yield sse(
                        {"type": "error", "error": {"message": "timed out", "type": "timeout", "status": 504}}
                    )
                    return
                await asyncio.sleep(delay_s)
                yield sse({"type": "token", "text": f" t{i}"})
            yield sse({"type": "done", "finish_reason": "length", "prompt_tokens": 7, "completion_tokens": n})

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fail-every", type=int, default=5)
    p.add_argument("--error-every", type=int, default=3)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--delay", type=float, default=0.001)
    a = p.parse_args()
    app = build_app(a.fail_every, a.error_every, a.tokens, a.delay)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
