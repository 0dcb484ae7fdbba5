"""What the routes share: admission (a bounded number of requests), deadlines, adapters by name,
sampling defaults, Server-Sent Events, metrics, and the engine's life: started in the background,
watched, and started again when it stops (a bounded number of times, with backoff, its adapters
reloaded). Routes stay HTTP-only."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse

from tuneforge.config import SamplingParams
from tuneforge.engines.base import (
    AdapterNotFound,
    Chunk,
    Completion,
    EngineDead,
    EngineError,
    InvalidRequest,
)
from tuneforge.errors import ConfigError
from tuneforge.models.resolve import generation_defaults
from tuneforge.serve.errors import (
    Conflict,
    EngineDown,
    EngineRestarting,
    GenerationTimeout,
    NotReady,
    Overloaded,
    http_status,
)
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.protocol import SamplingFields
from tuneforge.serve.settings import ServeSettings

log = logging.getLogger(__name__)
# no caching, and no buffering in nginx-style proxies: each event reaches the client as it is written
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
WATCH_INTERVAL_S = 1.0  # how often the engine's health is checked, with or without traffic
RELEASE_TIMEOUT_S = 60.0  # the most a stopped engine's shutdown may take before a new one starts


class GenerationService:
    def __init__(
        self, settings: ServeSettings, metrics: ServerMetrics, process: tuple[int, int] | None = None
    ):
        self.settings, self.metrics = settings, metrics
        self.process = process  # (index, count) when one of several API processes over one engine
        self.engine = None
        self.phase = "loading"
        """What the server is doing while `engine` is None: loading, restarting, failed or dead."""
        self.load_error: str | None = None  # why the first start failed
        self.stop_reason: str | None = None  # why the engine is not serving after it stopped
        self.restarts = 0  # restart attempts so far (each one an engine start)
        self.not_reloaded: dict[str, str] = {}  # adapters a restart could not load again: name -> why
        self.active = 0
        # what the model's generation_config.json sets, used where neither request nor recipe says
        self.model_defaults: dict[str, float] = {}
        self._factory: Callable | None = None
        self._tasks: set[asyncio.Task] = set()
        self._in_use: collections.Counter[str] = collections.Counter()  # adapter -> requests using it
        self._unloading: dict[str, asyncio.Event] = {}  # adapter -> set when its last request leaves
        self._adapter_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- the engine's life ---------------------------------------------------------------------------
    def start(self, factory: Callable) -> None:
        """Start the engine in the background and watch it; `factory(settings)` is kept to start it again."""
        self._factory = factory
        self._spawn(self._first_start())
        self._spawn(self._watch())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.engine is not None:
            await self.engine.shutdown()

    @property
    def state(self) -> str:
        """loading, ready, restarting, failed (never loaded) or dead (stopped, no restart left), as of now."""
        self.check_engine()
        return "ready" if self.engine is not None else self.phase

    def check_engine(self) -> None:
        """Notice a stopped engine now rather than at the next watch: on to a restart, or down for good."""
        engine = self.engine
        if engine is not None and not engine.is_healthy():
            self._stopped(engine)

    def require_engine(self):
        self.check_engine()
        if self.engine is None:
            raise self.unavailable()
        return self.engine

    def unavailable(self, partial_text: str | None = None) -> EngineError:
        """Why no request can be served now: 503, with Retry-After only while something is under way.
        With `partial_text`, the error of a request whose engine stopped under it."""
        during = partial_text is not None
        reason = (
            f"the engine stopped during this request ({len(partial_text)} characters were generated)"
            if during
            else self.stop_reason
        )
        if self.engine is not None:  # a request on an engine that was replaced already
            return EngineRestarting(f"{reason}; a new engine serves now: retry", partial_text)
        if self.phase == "loading":
            return NotReady("the model is loading; retry later")
        if self.phase == "failed":
            return EngineDown(
                f"the model failed to load: {self.load_error}; fix the cause (the server log has it) "
                "and restart the server",
                kind="model_not_loaded",
            )
        used = f"restarts used: {self.restarts} of {self.settings.engine_restarts}, engine_restarts"
        if self.phase == "restarting":
            return EngineRestarting(
                f"{reason}; the server is starting a new engine ({used}): retry in a few seconds",
                partial_text,
            )
        return EngineDown(
            f"{reason}; no restart is left ({used}): this server cannot generate; restart it or "
            "send the request to another replica",
            partial_text,
        )

    def _stopped(self, engine) -> None:
        if engine is not self.engine:  # already handled
            return
        self.engine = None
        self.stop_reason = "the engine stopped"
        if self.restarts < self.settings.engine_restarts:
            log.error("the engine stopped; starting a new one (%d restarts used)", self.restarts)
            self._set_phase("restarting")
            self._spawn(self._restart(engine))
        else:
            log.error("the engine stopped; no restart is left (engine_restarts=%d)", self.restarts)
            self._set_phase("dead")
            self._spawn(self._release(engine))

    async def _first_start(self) -> None:
        try:
            self.model_defaults = await asyncio.to_thread(
                generation_defaults, self.settings.model, self.settings.cache_dir
            )
            engine = await self._launch(self.settings.adapters, strict=True)
        except Exception as e:  # the process stays up and says why on /health and /ready
            log.exception("the model failed to load")
            self.load_error = f"{type(e).__name__}: {e}"
            self._set_phase("failed")
            return
        self._serve(engine)

    async def _restart(self, stopped) -> None:
        """Release the stopped engine, then start new ones until one serves or no restart is left."""
        adapters = stopped.adapters()
        await self._release(stopped)
        attempt = 0
        while self.restarts < self.settings.engine_restarts:
            await asyncio.sleep(self.settings.engine_restart_backoff_s * 2**attempt)
            attempt += 1
            self.restarts += 1
            limit = self.settings.engine_restarts
            log.warning("starting a new engine (restart %d of %d)", self.restarts, limit)
            try:
                engine = await self._launch(adapters, strict=False)
            except Exception as e:
                log.exception("restart %d failed", self.restarts)
                self.metrics.engine_restarts.labels("failed").inc()
                why = f"{type(e).__name__}: {e}"
                self.stop_reason = f"the engine stopped and restart {self.restarts} failed ({why})"
                continue
            self.metrics.engine_restarts.labels("ok").inc()
            self._serve(engine)
            return
        self._set_phase("dead")

    async def _launch(self, adapters: dict[str, str], strict: bool):
        """A started engine with `adapters` loaded, warmed up (settings.warmup). `strict` (the first start)
        fails on an adapter that cannot be loaded; a restart serves the others and reports it
        (`not_reloaded`)."""
        engine = await asyncio.to_thread(self._factory, self.settings)
        try:
            for name, path in adapters.items():
                try:
                    await self._engine_call(engine, engine.load_adapter(name, path))
                except InvalidRequest as e:  # its folder changed or went since it was loaded
                    if strict:
                        raise
                    log.error("adapter %s not reloaded after the restart: %s", name, e)
                    self.not_reloaded[name] = str(e)
            if self.settings.warmup:
                seconds = await self._engine_call(engine, engine.warm_up())
                log.info("warm-up: %.2f s for a first generation (kernels compiled on first use)", seconds)
        except BaseException:
            await self._release(engine)
            raise
        return engine

    def _serve(self, engine) -> None:
        self.engine, self.stop_reason = engine, None
        self._set_phase("ready")
        log.info("ready: %s", ", ".join(self.model_names()))

    async def _release(self, engine) -> None:
        """Shut a stopped engine down (its processes, memory, sockets) before another starts."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await engine.shutdown()
        except Exception:
            log.exception("shutting the stopped engine down failed; going on")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                self.check_engine()
            except Exception:
                log.exception("checking the engine's health failed")

    async def _engine_call(self, engine, coro):
        """Await an engine call, giving up when the engine stops meanwhile (a call to a process that died
        may never be answered): then the error says what the server is doing about it."""
        serving = engine is self.engine  # not while a (re)start loads its adapters
        task = asyncio.ensure_future(coro)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=WATCH_INTERVAL_S)
                if done:
                    return task.result()
                if not engine.is_healthy():
                    raise EngineDead("the engine stopped")
        except EngineDead:
            if not serving or engine.is_healthy():
                raise
            self._stopped(engine)
            raise self.unavailable() from None
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.metrics.engine_state.state(phase)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- admission -----------------------------------------------------------------------------------
    def enter(self, adapter: str | None = None) -> None:
        if self.active >= self.settings.max_pending:
            raise Overloaded(
                f"the server is at its limit of {self.settings.max_pending} requests in progress "
                "(max_pending); retry shortly"
            )
        if adapter is not None:
            self._check_adapter(adapter)  # again: it may have gone since the route looked
            self._in_use[adapter] += 1
        self.active += 1
        self.metrics.queue_depth.set(self.active)

    def leave(self, adapter: str | None = None) -> None:
        self.active -= 1
        self.metrics.queue_depth.set(self.active)
        if adapter is not None:
            self._in_use[adapter] -= 1
            if self._in_use[adapter] <= 0:
                del self._in_use[adapter]
                if adapter in self._unloading:
                    self._unloading[adapter].set()

    # -- adapters ------------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str) -> bool:
        """Load `name` from `path`; False when it is already loaded from there. Changes to one name happen
        one at a time, so two loads racing leave one adapter."""
        async with self._adapter_lock(name):
            engine = self.require_engine()
            loaded = engine.adapters().get(name)
            if loaded == path:
                return False
            if loaded is not None:
                raise Conflict(
                    f"an adapter named '{name}' is already loaded from {loaded}: unload it first "
                    f"(DELETE /v1/adapters/{name}) or load this one under another name",
                    param="name",
                )
            await self._engine_call(engine, engine.load_adapter(name, path))
            self.not_reloaded.pop(name, None)
            return True

    async def unload_adapter(self, name: str) -> int:
        """Unload `name` once the requests using it have finished (new ones get 404 meanwhile); returns how
        many it waited for. They are bounded by request_timeout_s, and so is the wait."""
        async with self._adapter_lock(name):
            engine = self.require_engine()
            if name not in engine.adapters():
                raise AdapterNotFound(self._missing(name), param="name")
            waited = self._in_use[name]
            drained = self._unloading[name] = asyncio.Event()
            try:
                if waited:
                    log.info("unloading adapter %s after its %d requests in progress", name, waited)
                    try:
                        await asyncio.wait_for(drained.wait(), self.settings.request_timeout_s + 5)
                    except TimeoutError:
                        log.warning("adapter %s: requests still use it; unloading anyway", name)
                await self._engine_call(engine, engine.unload_adapter(name))
            finally:
                del self._unloading[name]
            return waited

    def _adapter_lock(self, name: str) -> asyncio.Lock:
        lock = self._adapter_locks.get(name)
        if lock is None:
            lock = self._adapter_locks[name] = asyncio.Lock()
        return lock

    def _check_adapter(self, name: str) -> None:
        if name in self._unloading or name not in self.require_engine().adapters():
            raise AdapterNotFound(self._missing(name), param="model")

    def _missing(self, name: str) -> str:
        served = ", ".join(self.model_names())
        if name in self._unloading:
            return f"the adapter `{name}` is being unloaded; served: {served}"
        if name in self.not_reloaded:
            return (
                f"the adapter `{name}` was not loaded again after the engine restarted "
                f"({self.not_reloaded[name]}); load it with POST /v1/adapters"
            )
        return f"the model `{name}` does not exist; served: {served}"

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
        self._check_adapter(model)
        return model

    def model_names(self) -> list[str]:
        adapters = self.engine.adapters() if self.engine else {}
        return [self.settings.name, *sorted(n for n in adapters if n not in self._unloading)]

    # -- generation ----------------------------------------------------------------------------------
    async def _timed(
        self, prompt: str, sampling: SamplingParams, adapter: str | None
    ) -> AsyncIterator[Chunk]:
        """The engine's chunks, ended by GenerationTimeout at request_timeout_s. One timer per request (not
        one per chunk: at 64 streams a per-chunk `asyncio.timeout` was 6% of the API process's time on an
        H200): when it fires while we wait for the engine, it cancels that wait, as `asyncio.timeout`
        does; when it fires while the client is being sent a chunk, the next wait does not start."""
        engine = self.require_engine()
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        parts: list[str] = []
        state: dict = {"fired": False, "task": None}

        def expire() -> None:
            state["fired"] = True
            if state["task"] is not None:
                state["task"].cancel()

        def timeout() -> GenerationTimeout:
            return GenerationTimeout(
                f"generation did not finish within {self.settings.request_timeout_s:g} s "
                f"(request_timeout_s); {len(''.join(parts))} characters were generated",
                "".join(parts),
            )

        timer = loop.call_at(loop.time() + self.settings.request_timeout_s, expire)
        gen = engine.stream(prompt, sampling, adapter)
        try:
            while True:
                if state["fired"]:
                    raise timeout()
                task = state["task"] = asyncio.current_task()
                cancelling = task.cancelling()
                try:
                    chunk = await anext(gen)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if state["fired"] and task.uncancel() <= cancelling:  # ours, and no one else's
                        raise timeout() from None
                    raise
                except EngineDead as e:
                    raise self._stopped_during(engine, e, "".join(parts)) from None
                finally:
                    state["task"] = None
                if not parts:
                    self.metrics.ttft.observe(time.perf_counter() - start)
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    self.metrics.generated_tokens.inc(chunk.completion_tokens)
                    self.metrics.prompt_tokens.inc(chunk.prompt_tokens)
                yield chunk
        finally:
            timer.cancel()
            await gen.aclose()

    async def start_stream(self, prompt: str, sampling: SamplingParams, adapter: str | None):
        """Admit the request and wait for its first chunk, so that an error before any output is an
        HTTP status; later errors arrive in the stream."""
        self.enter(adapter)
        gen = self._timed(prompt, sampling, adapter)
        try:
            first = await anext(gen)
        except BaseException:
            await gen.aclose()
            self.leave(adapter)
            raise

        async def chunks() -> AsyncIterator[Chunk]:
            try:
                yield first
                async for chunk in gen:
                    yield chunk
            finally:
                await gen.aclose()
                self.leave(adapter)

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
        self.enter(adapter)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                done = await engine.complete_batch(prompts, sampling, adapter)
        except TimeoutError:
            raise GenerationTimeout(
                f"the batch did not finish within {self.settings.request_timeout_s:g} s (request_timeout_s)",
                "",
            ) from None
        except EngineDead as e:
            raise self._stopped_during(engine, e, "") from None
        finally:
            self.leave(adapter)
        self.metrics.ttft.observe(time.perf_counter() - start)
        self.metrics.generated_tokens.inc(sum(c.completion_tokens for c in done))
        self.metrics.prompt_tokens.inc(sum(c.prompt_tokens for c in done))
        return done

    def _stopped_during(self, engine, error: EngineDead, partial_text: str) -> EngineError:
        """The error of a request whose engine stopped under it, in our words (not the engine's log hints):
        what was generated, and what the server does about it."""
        if engine.is_healthy():  # the engine says it still serves: its own error stands
            return error
        self._stopped(engine)
        return self.unavailable(partial_text)

    # -- streaming -----------------------------------------------------------------------------------
    def sse(
        self,
        chunks: AsyncIterator[Chunk],
        on_chunk: Callable[[Chunk], dict | str | list | None],
        on_error: Callable[[EngineError], dict],
        done: str | None = None,
    ) -> StreamingResponse:
        """A Server-Sent Events response: one `data: {json}` event per chunk, written by Starlette's
        StreamingResponse, which cancels the generation when the client goes. (sse-starlette's per-event
        cancel scope and task group cost 30% of the API process's CPU per streamed token,
        benchmarks/api_overhead.py; vLLM's own server writes its events the same way.) An error after the
        first event is one error event, then the stream ends (no `done` line), so a client can tell a
        failed stream from a finished one."""
        events = self._events(chunks, on_chunk, on_error, done)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

    async def _events(self, chunks, on_chunk, on_error, done) -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                for event in _as_list(on_chunk(chunk)):  # a str is already JSON (protocol.text_event)
                    text = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
                    yield f"data: {text}\n\n"
        except EngineError as e:
            self.metrics.errors.labels(str(http_status(e)), e.kind).inc()
            yield f"data: {json.dumps(on_error(e), ensure_ascii=False)}\n\n"
            return
        except Exception:
            log.exception("generation failed mid-stream")
            self.metrics.errors.labels("500", "internal_error").inc()
            error = on_error(EngineError("internal error during generation; see the server log"))
            yield f"data: {json.dumps(error, ensure_ascii=False)}\n\n"
            return
        finally:
            await chunks.aclose()
        if done is not None:
            yield f"data: {done}\n\n"


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
