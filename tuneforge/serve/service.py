"""What the routes share: admission (a bounded number of requests), deadlines, adapters by name,
sampling defaults, Server-Sent Events, and metrics. Routes stay HTTP-only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse

from tuneforge.config import SamplingParams
from tuneforge.engines.base import AdapterNotFound, Chunk, Completion, EngineError, InvalidRequest
from tuneforge.errors import ConfigError
from tuneforge.serve.errors import GenerationTimeout, NotReady, Overloaded, http_status
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.protocol import SamplingFields
from tuneforge.serve.settings import ServeSettings

log = logging.getLogger(__name__)
NO_CACHE = {"Cache-Control": "no-cache"}  # sse-starlette adds X-Accel-Buffering: no


class GenerationService:
    def __init__(self, settings: ServeSettings, metrics: ServerMetrics):
        self.settings, self.metrics = settings, metrics
        self.engine = None
        self.load_error: str | None = None
        self.active = 0
        # what the model's generation_config.json sets, used where neither request nor recipe says
        self.model_defaults: dict[str, float] = {}

    # -- state ---------------------------------------------------------------------------------------
    def require_engine(self):
        if self.engine is None:
            why = (
                f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            )
            raise NotReady(f"{why}; retry later")
        return self.engine

    def enter(self) -> None:
        if self.active >= self.settings.max_pending:
            raise Overloaded(
                f"the server is at its limit of {self.settings.max_pending} requests in progress "
                "(max_pending); retry shortly"
            )
        self.active += 1
        self.metrics.queue_depth.set(self.active)

    def leave(self) -> None:
        self.active -= 1
        self.metrics.queue_depth.set(self.active)

    # -- request fields ------------------------------------------------------------------------------
    def sampling(self, req: SamplingFields, max_tokens: int | None = None) -> SamplingParams:
        d = self.settings.sampling
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])

        def default(name: str) -> float:
            """The request's value, else the recipe's, else the model's, else 1.0 (OpenAI's and vLLM's)."""
            for value in (getattr(req, name), getattr(d, name), self.model_defaults.get(name)):
                if value is not None:
                    return value
            return 1.0

        try:
            return SamplingParams(
                temperature=default("temperature"),
                top_p=default("top_p"),
                max_tokens=max_tokens or req.max_tokens or d.max_tokens,
                stop=stop,
                ignore_eos=req.ignore_eos,
            )
        except ConfigError as e:
            raise InvalidRequest(str(e), param=str(e).split(":")[0]) from None

    def adapter_for(self, model: str | None) -> str | None:
        """None for the base model (its served name or no name); else an adapter's name."""
        if model is None or model in (self.settings.name, self.settings.model):
            return None
        engine = self.require_engine()
        if model not in engine.adapters():
            raise AdapterNotFound(
                f"the model `{model}` does not exist; served: {', '.join(self.model_names())}", param="model"
            )
        return model

    def model_names(self) -> list[str]:
        return [self.settings.name, *(sorted(self.engine.adapters()) if self.engine else [])]

    # -- generation ----------------------------------------------------------------------------------
    async def _timed(
        self, prompt: str, sampling: SamplingParams, adapter: str | None
    ) -> AsyncIterator[Chunk]:
        engine = self.require_engine()
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        parts: list[str] = []
        gen = engine.stream(prompt, sampling, adapter)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(gen)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise GenerationTimeout(
                        f"generation did not finish within {self.settings.request_timeout_s:g} s "
                        f"(request_timeout_s); {len(''.join(parts))} characters were generated",
                        "".join(parts),
                    ) from None
                if not parts:
                    self.metrics.ttft.observe(time.perf_counter() - start)
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    self.metrics.generated_tokens.inc(chunk.completion_tokens)
                    self.metrics.prompt_tokens.inc(chunk.prompt_tokens)
                yield chunk
        finally:
            await gen.aclose()

    async def start_stream(self, prompt: str, sampling: SamplingParams, adapter: str | None):
        """Admit the request and wait for its first chunk, so that an error before any output is an
        HTTP status; later errors arrive in the stream."""
        self.enter()
        gen = self._timed(prompt, sampling, adapter)
        try:
            first = await anext(gen)
        except BaseException:
            await gen.aclose()
            self.leave()
            raise

        async def chunks() -> AsyncIterator[Chunk]:
            try:
                yield first
                async for chunk in gen:
                    yield chunk
            finally:
                await gen.aclose()
                self.leave()

        return chunks()

    async def complete(self, prompt: str, sampling: SamplingParams, adapter: str | None) -> Completion:
        chunks = await self.start_stream(prompt, sampling, adapter)
        parts, last = [], None
        try:
            async for chunk in chunks:
                parts.append(chunk.text)
                last = chunk
        finally:
            await chunks.aclose()
        return Completion("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    async def complete_batch(
        self, prompts: list[str], sampling: SamplingParams, adapter: str | None
    ) -> list[Completion]:
        limit = self.settings.max_batch_prompts
        if len(prompts) > limit:
            raise InvalidRequest(
                f"{len(prompts)} prompts in one batch; the limit is {limit} (max_batch_prompts)",
                param="prompts",
            )
        for i, p in enumerate(prompts):
            if not p:
                raise InvalidRequest(f"prompts[{i}] is empty", param=f"prompts[{i}]")
        engine = self.require_engine()
        self.enter()
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                done = await engine.complete_batch(prompts, sampling, adapter)
        except TimeoutError:
            raise GenerationTimeout(
                f"the batch did not finish within {self.settings.request_timeout_s:g} s (request_timeout_s)",
                "",
            ) from None
        finally:
            self.leave()
        self.metrics.ttft.observe(time.perf_counter() - start)
        self.metrics.generated_tokens.inc(sum(c.completion_tokens for c in done))
        self.metrics.prompt_tokens.inc(sum(c.prompt_tokens for c in done))
        return done

    # -- streaming -----------------------------------------------------------------------------------
    def sse(
        self,
        chunks: AsyncIterator[Chunk],
        on_chunk: Callable[[Chunk], dict | None],
        on_error: Callable[[EngineError], dict],
        done: str | None = None,
    ) -> EventSourceResponse:
        """A Server-Sent Events response (sse-starlette: `data: {json}` per event, keep-alive pings,
        generation cancelled when the client goes). An error after the first event is one error event,
        then the stream ends (no `done` line), so a client can tell a failed stream from a finished one."""
        return EventSourceResponse(self._events(chunks, on_chunk, on_error, done), sep="\n", headers=NO_CACHE)

    async def _events(self, chunks, on_chunk, on_error, done) -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                for event in _as_list(on_chunk(chunk)):
                    yield json.dumps(event, ensure_ascii=False)
        except EngineError as e:
            self.metrics.errors.labels(str(http_status(e)), e.kind).inc()
            yield json.dumps(on_error(e), ensure_ascii=False)
            return
        except Exception:
            log.exception("generation failed mid-stream")
            self.metrics.errors.labels("500", "internal_error").inc()
            error = on_error(EngineError("internal error during generation; see the server log"))
            yield json.dumps(error, ensure_ascii=False)
            return
        finally:
            await chunks.aclose()
        if done is not None:
            yield done


def _as_list(event):
    return [] if event is None else event if isinstance(event, list) else [event]


async def with_cancellation(request, coro):
    """Run `coro` until it finishes or the client disconnects; then cancel it (and its generation)."""
    work = asyncio.ensure_future(coro)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        raise ClientDisconnected()
    return work.result()


class ClientDisconnected(Exception):
    """The client went away; its generation was cancelled and nothing is sent."""
