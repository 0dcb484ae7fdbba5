"""What the load generator sends requests to, each timing every chunk of a streamed answer.

    OpenAITarget    POST {base}/v1/completions, stream=true, usage in the last chunk, then `data: [DONE]`
                    (any OpenAI-compatible server: vLLM, SGLang, tuneforge serve)
    GenerateTarget  POST {base}/generate, tuneforge's own streaming endpoint (token / done / error events)
    EngineTarget    an engine object in this process (`engine.stream(prompt, sampling, adapter)`)

A request fails when the HTTP status is not 200, when the stream carries an error event (even under HTTP
200), when the stream ends without its end marker, on timeout and on connection errors;
`RequestRecord.error_kind` says which.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tuneforge.bench.stats import RequestRecord
from tuneforge.config import SamplingParams

# --------------------------------------------------------------------------- timing one stream


class _Timer:
    """First-chunk and inter-chunk times of one request."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []
        self.chunks = 0

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self.last)  # type: ignore[operator]
        self.last = now
        self.chunks += 1

    def record(self, ok: bool, t0: float, **kw: Any) -> RequestRecord:
        end = time.perf_counter()
        return RequestRecord(
            ok=ok,
            ttft_s=(self.first - self.start) if self.first is not None else None,
            e2e_s=end - self.start,
            itl_s=self.gaps if ok else [],
            start_s=self.start - t0,
            **kw,
        )


def _error_message(obj: Any) -> str:
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err if err is not None else obj)


async def _post_stream(client, url: str, body: dict, headers: dict, timer: _Timer, t0: float, handle):
    """POST and feed each SSE event's data to `handle(payload) -> RequestRecord | None` (a record ends
    it); httpx-sse parses the stream (comments such as keep-alive pings are skipped)."""
    import httpx
    from httpx_sse import EventSource, SSEError

    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")[:300]
                return timer.record(
                    False, t0, error_kind=f"http_{resp.status_code}", status=resp.status_code, error=text
                )
            async for event in EventSource(resp).aiter_sse():
                payload = event.data
                try:
                    record = handle(payload, resp.status_code)
                except (json.JSONDecodeError, AttributeError, TypeError) as e:
                    return timer.record(
                        False,
                        t0,
                        error_kind="bad_event",
                        status=resp.status_code,
                        error=f"{e}: {payload[:200]}",
                    )
                if record is not None:
                    return record
            return timer.record(
                False,
                t0,
                error_kind="incomplete_stream",
                status=resp.status_code,
                error="stream ended without its end marker",
            )
    except SSEError as e:  # not an event stream (a wrong content type)
        return timer.record(False, t0, error_kind="not_sse", error=str(e))
    except httpx.TimeoutException as e:
        return timer.record(False, t0, error_kind="timeout", error=f"{type(e).__name__}: {e}")
    except httpx.ConnectError as e:
        return timer.record(False, t0, error_kind="connect", error=str(e))
    except httpx.HTTPError as e:  # connection dropped mid-stream, protocol errors
        return timer.record(False, t0, error_kind="incomplete_stream", error=f"{type(e).__name__}: {e}")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --------------------------------------------------------------------------- targets


@dataclass
class OpenAITarget:
    """Any OpenAI-compatible server's streaming /v1/completions."""

    base_url: str
    model: str
    max_tokens: int = 128
    api_key: str | None = None
    ignore_eos: bool = False
    """Ask the server (vLLM) to generate exactly max_tokens, so every request has the same length."""
    temperature: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {"api": "openai", "url": self.base_url, "model": self.model, "max_tokens": self.max_tokens}

    async def send(self, client, prompt: str, t0: float) -> RequestRecord:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        timer = _Timer()
        usage: dict[str, int] = {}

        def handle(payload: str, status: int) -> RequestRecord | None:
            if payload == "[DONE]":
                return timer.record(
                    True,
                    t0,
                    status=status,
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or timer.chunks),
                )
            obj = json.loads(payload)
            if "error" in obj:
                return timer.record(
                    False, t0, error_kind="stream_error", status=status, error=_error_message(obj)
                )
            choices = obj.get("choices") or []
            if choices and choices[0].get("text"):
                timer.chunk()
            if obj.get("usage"):
                usage.update(obj["usage"])
            return None

        url = self.base_url.rstrip("/") + "/v1/completions"
        return await _post_stream(client, url, body, _headers(self.api_key), timer, t0, handle)


@dataclass
class GenerateTarget:
    """tuneforge's own streaming POST /generate."""

    base_url: str
    model: str | None = None
    """Adapter name to use (None: the base model)."""
    max_tokens: int = 128
    api_key: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {"api": "generate", "url": self.base_url, "model": self.model, "max_tokens": self.max_tokens}

    async def send(self, client, prompt: str, t0: float) -> RequestRecord:
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stream": True,
        }
        if self.model:
            body["model"] = self.model
        timer = _Timer()

        def handle(payload: str, status: int) -> RequestRecord | None:
            obj = json.loads(payload)
            kind = obj.get("type")
            if kind == "token":
                if obj.get("text"):
                    timer.chunk()
                return None
            if kind == "done":
                return timer.record(
                    True,
                    t0,
                    status=status,
                    input_tokens=int(obj.get("prompt_tokens") or 0),
                    output_tokens=int(obj.get("completion_tokens") or timer.chunks),
                )
            if kind == "error" or "error" in obj:
                return timer.record(
                    False, t0, error_kind="stream_error", status=status, error=_error_message(obj)
                )
            return None

        url = self.base_url.rstrip("/") + "/generate"
        return await _post_stream(client, url, body, _headers(self.api_key), timer, t0, handle)


@dataclass
class EngineTarget:
    """An engine in this process: `engine.stream(prompt, sampling, adapter)` yields chunks with `text`,
    `finish_reason` and running `prompt_tokens` / `completion_tokens`."""

    engine: Any
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=128))
    adapter: str | None = None
    timeout_s: float = 600.0

    def describe(self) -> dict[str, Any]:
        name = getattr(self.engine, "name", type(self.engine).__name__)
        return {
            "api": "engine",
            "model": name,
            "adapter": self.adapter,
            "max_tokens": self.sampling.max_tokens,
        }

    async def send(self, client, prompt: str, t0: float) -> RequestRecord:
        timer = _Timer()
        last = None
        try:
            async with asyncio.timeout(self.timeout_s):
                async for chunk in self.engine.stream(prompt, self.sampling, adapter=self.adapter):
                    if chunk.text:
                        timer.chunk()
                    last = chunk
        except TimeoutError:
            return timer.record(False, t0, error_kind="timeout", error=f"no end after {self.timeout_s} s")
        except Exception as e:  # engine errors carry a kind and an HTTP status
            return timer.record(
                False,
                t0,
                error_kind=getattr(e, "kind", None) or "exception",
                status=getattr(e, "status", None),
                error=f"{type(e).__name__}: {e}",
            )
        if last is None or last.finish_reason is None:
            return timer.record(False, t0, error_kind="incomplete_stream", error="no final chunk")
        if last.finish_reason == "error":
            return timer.record(False, t0, error_kind="stream_error", error="engine reported an error")
        return timer.record(
            True,
            t0,
            input_tokens=int(last.prompt_tokens),
            output_tokens=int(last.completion_tokens or timer.chunks),
        )
