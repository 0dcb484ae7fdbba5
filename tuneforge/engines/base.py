"""The small interface every generation engine offers, and the errors it raises. Imports no torch.

An engine streams one prompt (`stream`), completes a batch (`complete_batch`, one batch through the
model), and for offline work (evaluation) generates a list of prompts synchronously (`generate`).
Adapters are served by name: `load_adapter`, `unload_adapter`, `adapters`. The server, the evaluator
and the benchmark use only what is here, so either engine (vLLM or transformers) fits all three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tuneforge.config import SamplingParams


@dataclass
class Chunk:
    """Text produced since the previous chunk; token counts are running totals for the request."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    """None until the last chunk; then "stop" (end of sequence or a stop string) or "length"."""


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class EngineError(Exception):
    """An engine's error; `kind` says what went wrong, `param` names the request field at fault (the server
    maps each kind to an HTTP status in tuneforge.serve.errors)."""

    kind = "engine_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidRequest(EngineError):
    kind = "invalid_request_error"


class PromptTooLong(InvalidRequest):
    kind = "context_length_exceeded"


class AdapterNotFound(EngineError):
    kind = "adapter_not_found"


class EngineOutOfMemory(EngineError):
    kind = "out_of_memory"


class EngineDead(EngineError):
    kind = "engine_dead"


class Engine(Protocol):
    name: str
    """The served base model's name (what /v1/models lists first)."""
    max_model_len: int
    """Longest prompt + completion, in tokens."""

    def count_tokens(self, prompt: str) -> int: ...

    def apply_chat_template(self, messages: list[dict]) -> str: ...

    def stream(
        self, prompt: str, sampling: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[Chunk]: ...

    async def complete_batch(
        self, prompts: Sequence[str], sampling: SamplingParams, adapter: str | None = None
    ) -> list[Completion]: ...

    def generate(
        self, prompts: Sequence[str], sampling: SamplingParams, adapter: str | None = None
    ) -> list[str]: ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> dict[str, str]: ...

    def describe(self) -> dict: ...

    async def warm_up(self) -> float:
        """Whatever the engine compiles on first use, done now (before serving); returns the seconds."""
        ...

    def is_healthy(self) -> bool: ...

    async def shutdown(self) -> None: ...


def check_context(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """Reject a request that cannot fit the context, naming the field to change (as vLLM's server does)."""
    if prompt_tokens >= max_model_len:
        raise PromptTooLong(
            f"the prompt is {prompt_tokens} tokens; this model's context is {max_model_len} tokens "
            "(prompt + completion): shorten the prompt",
            param="prompt",
        )
    if prompt_tokens + max_tokens > max_model_len:
        raise PromptTooLong(
            f"max_tokens={max_tokens} plus the prompt's {prompt_tokens} tokens exceeds this model's "
            f"context of {max_model_len} tokens: set max_tokens <= {max_model_len - prompt_tokens}",
            param="max_tokens",
        )


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
