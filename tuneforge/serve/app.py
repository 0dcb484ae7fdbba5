"""The app factory: `build_app(settings)` returns the FastAPI app; the engine loads in the background,
so /health answers at once and /ready says 503 (Retry-After) until the model is loaded. The service
keeps the engine factory to start a new engine when one stops (settings.engine_restarts).

Tests pass `engine_factory` to put a fake engine behind the real app.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.engines.base import EngineError, InvalidRequest
from tuneforge.serve import admin, openai_routes, routes
from tuneforge.serve.errors import HttpError, ServerError, Unauthorized, error_response, http_status
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.service import ClientDisconnected, GenerationService
from tuneforge.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def default_engine_factory(settings: ServeSettings):
    from tuneforge.engines.select import start_engine

    # LoRA support costs vLLM memory and time: on only when adapters can be served
    lora = bool(settings.adapters or settings.adapter_dir)
    return start_engine(
        settings.model,
        settings.inference,
        name=settings.name,
        cache_dir=settings.cache_dir,
        enable_lora=lora,
        revision=settings.revision,
        adapters=list(settings.adapters.values()),
        runtime_adapters=bool(settings.adapter_dir),
    )


def build_app(
    settings: ServeSettings, engine_factory: Callable | None = None, process: tuple[int, int] | None = None
) -> FastAPI:
    """`process`: (index, count) in an API process of several over one engine (serve/processes.py)."""
    factory = engine_factory or default_engine_factory
    metrics = ServerMetrics()
    svc = GenerationService(settings, metrics, process)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start(factory)  # in the background; the factory is kept to restart a stopped engine
        yield
        await svc.stop()

    auth = [Depends(api_key_check(settings))] if settings.api_key else []
    app = FastAPI(
        title="tuneforge",
        summary="Generation with SSE streaming, batches, OpenAI-compatible routes and LoRA adapters",
        lifespan=lifespan,
        # with an API key, the schema and its pages need it too (added below, behind the key)
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} if auth else {}),
    )
    app.state.service = svc
    if auth:
        add_protected_docs(app, auth)
    app.include_router(routes.open_router)
    for router in (routes.router, openai_routes.router, admin.router):
        app.include_router(router, dependencies=auth)
    add_error_handlers(app, metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def api_key_check(settings: ServeSettings):
    expected = f"Bearer {settings.api_key.get_secret_value()}"

    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    return check


def add_protected_docs(app: FastAPI, auth: list) -> None:
    """/openapi.json, /docs and /redoc behind the API key, as every route but the probes."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
    async def schema():
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=auth)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="tuneforge")

    @app.get("/redoc", include_in_schema=False, dependencies=auth)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title="tuneforge")


def add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(EngineError)
    async def engine_error(request: Request, e: EngineError):
        metrics.errors.labels(str(http_status(e)), e.kind).inc()
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        problems, param = [], None
        for err in e.errors():
            if err.get("type") == "json_invalid":  # loc is ("body", character offset)
                where = err.get("loc", ("body", "?"))[-1]
                reason = (err.get("ctx") or {}).get("error", "JSON decode error")
                error = InvalidRequest(
                    f"the request body is not valid JSON: {reason} at character {where}", param="body"
                )
                metrics.errors.labels("400", error.kind).inc()
                return error_response(error)
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            param = param or ".".join(loc) or None
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        error = InvalidRequest("; ".join(problems) or "invalid request", param=param)
        metrics.errors.labels("400", error.kind).inc()
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return error_response(HttpError(e.status_code, str(e.detail)))

    @app.exception_handler(ClientDisconnected)
    async def gone(request: Request, e: ClientDisconnected):
        metrics.errors.labels("499", "client_disconnected").inc()
        return JSONResponse(
            {"error": {"message": "client disconnected", "type": "cancelled", "code": 499}}, 499
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error (ref %s) on %s %s", ref, request.method, request.url.path)
        metrics.errors.labels("500", "internal_error").inc()
        return error_response(ServerError(f"internal error; the server log has the details under ref {ref}"))


class BodyLimit:
    """413 for a body over the limit, by Content-Length or by counting a chunked body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._too_large(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # FastAPI passes an HTTPException from here through unchanged
                raise StarletteHTTPException(413, f"request body over {self.limit} bytes (max_body_bytes)")
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, send):
        response = error_response(HttpError(413, f"request body over {self.limit} bytes (max_body_bytes)"))
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class RequestMetrics:
    """Counts requests by route and status, and times them to the end of the response (streams too)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
