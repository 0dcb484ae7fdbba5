"""tuneforge's own routes: /generate (SSE by default), /generate/batch, /health, /ready, /metrics."""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from tuneforge.serve.errors import error_body
from tuneforge.serve.protocol import (
    BatchGenerateRequest,
    BatchGenerateResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ResultDetail,
    text_event,
)
from tuneforge.serve.service import GenerationService, with_cancellation

ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 429, 503, 504)}

router = APIRouter()  # behind the API key, when one is set
open_router = APIRouter()  # probes: never behind the key


def service(request: Request) -> GenerationService:
    return request.app.state.service


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
    summary="Generate for one prompt: SSE events (default) or one JSON response with stream=false",
)
async def generate(body: GenerateRequest, request: Request):
    svc = service(request)
    sampling, adapter = svc.sampling(body), svc.adapter_for(body.model)
    start = time.perf_counter()
    if not body.stream:
        c = await with_cancellation(request, svc.complete(body.prompt, sampling, adapter))
        ms = (time.perf_counter() - start) * 1000
        return GenerateResponse(
            text=c.text,
            finish_reason=c.finish_reason,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            latency_ms=ms,
            model=body.model or svc.settings.name,
        )
    chunks = await with_cancellation(request, svc.start_stream(body.prompt, sampling, adapter))

    token = text_event(lambda text: {"type": "token", "text": text})

    def on_chunk(c):
        events = [token(c.text)] if c.text else []
        if c.finish_reason is not None:
            events.append(
                {
                    "type": "done",
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    "latency_ms": (time.perf_counter() - start) * 1000,
                }
            )
        return events

    def on_error(e):
        body = {"type": "error", "error": error_body(e)}
        if hasattr(e, "partial_text"):
            body["partial_text"] = e.partial_text
        return body

    return svc.sse(chunks, on_chunk, on_error)


@router.post("/generate/batch", response_model=BatchGenerateResponse, responses=ERRORS)
async def generate_batch(body: BatchGenerateRequest, request: Request) -> BatchGenerateResponse:
    """One result per prompt, in order; all prompts go to the engine as one batch."""
    svc = service(request)
    sampling, adapter = svc.sampling(body), svc.adapter_for(body.model)
    start = time.perf_counter()
    done = await with_cancellation(request, svc.complete_batch(body.prompts, sampling, adapter))
    return BatchGenerateResponse(
        results=[c.text for c in done],
        details=[ResultDetail(**{k: getattr(c, k) for k in ResultDetail.model_fields}) for c in done],
        latency_ms=(time.perf_counter() - start) * 1000,
        model=body.model or svc.settings.name,
    )


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(service(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@open_router.get(
    "/health",
    summary="Liveness: 200 while the server serves or is getting there (loading, restarting its engine); "
    "503 when it cannot recover by itself",
)
async def health(request: Request):
    svc = service(request)
    state = svc.state
    if state in ("failed", "dead"):
        body = {"status": "dead", "engine": state, "error": svc.load_error or svc.stop_reason}
        return JSONResponse(body | {"restarts": svc.restarts}, status_code=503)
    body = {"status": "ok", "engine": state}
    if svc.process is not None:  # which of several API processes answered: "2/4", and its pid
        body |= {"api_process": f"{svc.process[0] + 1}/{svc.process[1]}", "pid": os.getpid()}
    if state == "restarting":
        body |= {"error": svc.stop_reason, "restarts": svc.restarts}
    return body


@open_router.get(
    "/ready",
    summary="Readiness: 200 only while the engine serves; 503 otherwise, with Retry-After while it loads or "
    "restarts",
)
async def ready(request: Request):
    svc = service(request)
    state = svc.state
    restarts = {"restarts": svc.restarts, "restarts_left": svc.settings.engine_restarts - svc.restarts}
    if state != "ready":
        body = {"status": state, "error": svc.load_error or svc.stop_reason, **restarts}
        retry = {"Retry-After": "5"} if state in ("loading", "restarting") else {}
        return JSONResponse(body, status_code=503, headers=retry)
    body = {"status": "ready", "models": svc.model_names(), "engine": svc.engine.describe(), **restarts}
    if svc.not_reloaded:
        body["adapters_not_reloaded"] = svc.not_reloaded
    return body
