"""Errors as HTTP responses, in one place: which status each engine error maps to, the errors only the
server raises (with their status), and the OpenAI-style error body every route and stream uses."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from tuneforge.engines.base import (
    AdapterNotFound,
    EngineDead,
    EngineError,
    EngineOutOfMemory,
    InvalidRequest,
)

# engine errors know nothing of HTTP: their status is decided here (the most specific class wins)
ENGINE_STATUS: dict[type[EngineError], int] = {
    InvalidRequest: 400,  # PromptTooLong too
    AdapterNotFound: 404,
    EngineOutOfMemory: 503,
    EngineDead: 503,
}


class ServerError(EngineError):
    """An error of the HTTP layer itself; it carries its status."""

    status, kind = 500, "internal_error"


class Unauthorized(ServerError):
    status, kind = 401, "authentication_error"


class Forbidden(ServerError):
    status, kind = 403, "forbidden"


class Overloaded(ServerError):
    status, kind = 429, "overloaded"
    retry_after = 1


class NotReady(ServerError):
    status, kind = 503, "model_not_loaded"
    retry_after = 5


class EngineRestarting(NotReady):
    """The engine stopped and the server is starting a new one: retry after a few seconds."""

    kind = "engine_restarting"

    def __init__(self, message: str, partial_text: str | None = None):
        super().__init__(message)
        if partial_text is not None:
            self.partial_text = partial_text


class EngineDown(ServerError):
    """The engine stopped (or never loaded) and the server will not start another: no Retry-After, as
    retrying here cannot help; a load balancer should send the request elsewhere."""

    status, kind = 503, "engine_dead"

    def __init__(self, message: str, partial_text: str | None = None, kind: str | None = None):
        super().__init__(message)
        if partial_text is not None:
            self.partial_text = partial_text
        if kind is not None:
            self.kind = kind


class Conflict(ServerError):
    status, kind = 409, "conflict"


class GenerationTimeout(ServerError):
    status, kind = 504, "timeout"

    def __init__(self, message: str, partial_text: str):
        super().__init__(message)
        self.partial_text = partial_text


class HttpError(ServerError):
    """Routing and transport errors (404, 405, 413) in the same body as every other error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        self.status, self.kind = status, kinds.get(status, "http_error")


def http_status(e: EngineError) -> int:
    if isinstance(e, ServerError):
        return e.status
    return next((ENGINE_STATUS[c] for c in type(e).__mro__ if c in ENGINE_STATUS), 500)


def error_body(e: EngineError) -> dict:
    return {"message": str(e), "type": e.kind, "param": e.param, "code": http_status(e)}


def error_response(e: EngineError) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after)} if hasattr(e, "retry_after") else {}
    if isinstance(e, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    content = {"error": error_body(e)}
    if hasattr(e, "partial_text"):
        content["partial_text"] = e.partial_text
    return JSONResponse(content, status_code=http_status(e), headers=headers)
