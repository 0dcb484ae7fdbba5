"""A scripted engine behind the real app: every status path without a model.

A prompt's reply is "w0 w1 ... w{n-1}" (one word per chunk, n = max_tokens unless `words` is set), so
a test knows exactly what each request should produce. `fail_at` raises `error` before chunk k.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

from tuneforge.engines.base import AdapterNotFound, Chunk, Completion, check_context, cut_at_stop


class FakeEngine:
    name = "fake"

    def __init__(self, *, max_model_len=64, delay=0.0, words=None, fail_at=None, error=None, healthy=True):
        self.max_model_len, self.delay, self.words = max_model_len, delay, words
        self.fail_at, self.error, self.healthy = fail_at, error, healthy
        self._adapters: dict[str, str] = {}
        self.batches: list[int] = []  # prompts per complete_batch call
        self.started = 0
        self.cancelled = 0
        self.finished = 0
        self.samplings: list = []  # the SamplingParams of every request, in order
        self.warmups = 0

    def count_tokens(self, prompt: str) -> int:
        return len(prompt.split())

    def apply_chat_template(self, messages: list[dict]) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def reply(self, prompt: str, max_tokens: int, adapter: str | None) -> list[str]:
        n = min(self.words if self.words is not None else max_tokens, max_tokens)
        tag = f"{adapter}:" if adapter else ""
        key = zlib.crc32(prompt.encode()) % 1000  # the reply tells which prompt it answers
        return [f" {tag}{key}w{i}" for i in range(n)]

    def _check(self, prompt, sampling, adapter):
        self.samplings.append(sampling)
        if adapter is not None and adapter not in self._adapters:
            raise AdapterNotFound(f"no adapter named '{adapter}'", param="model")
        check_context(self.count_tokens(prompt), sampling.max_tokens, self.max_model_len)

    async def stream(self, prompt, sampling, adapter=None):
        self._check(prompt, sampling, adapter)
        self.started += 1
        words = self.reply(prompt, sampling.max_tokens, adapter)
        n_prompt = self.count_tokens(prompt)
        text = ""
        try:
            for i, word in enumerate(words):
                if self.fail_at == i:
                    raise self.error
                if self.delay:
                    await asyncio.sleep(self.delay)
                text += word
                visible, hit = cut_at_stop(text, sampling.stop)
                last = hit or i == len(words) - 1
                reason = ("stop" if hit or len(words) < sampling.max_tokens else "length") if last else None
                yield Chunk(word if not hit else visible[len(text) - len(word) :], n_prompt, i + 1, reason)
                if hit:
                    break
            if not words:
                yield Chunk("", n_prompt, 0, "stop")
            self.finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def complete_batch(self, prompts: Sequence[str], sampling, adapter=None):
        for p in prompts:
            self._check(p, sampling, adapter)
        self.batches.append(len(prompts))
        if self.fail_at is not None:
            raise self.error
        if self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for p in prompts:
            words = self.reply(p, sampling.max_tokens, adapter)
            reason = "length" if len(words) == sampling.max_tokens else "stop"
            out.append(Completion("".join(words), reason, self.count_tokens(p), len(words)))
        return out

    def generate(self, prompts, sampling, adapter=None):
        return ["".join(self.reply(p, sampling.max_tokens, adapter)) for p in prompts]

    async def load_adapter(self, name: str, path: str) -> None:
        self._adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise AdapterNotFound(f"no adapter named '{name}'", param="model")
        del self._adapters[name]

    def adapters(self) -> dict[str, str]:
        return dict(self._adapters)

    def describe(self) -> dict:
        return {"kind": "fake", "max_model_len": self.max_model_len}

    async def warm_up(self) -> float:
        self.warmups += 1
        return 0.0

    def is_healthy(self) -> bool:
        return self.healthy

    async def shutdown(self) -> None:
        pass
