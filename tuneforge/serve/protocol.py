"""Request and response schemas: tuneforge's own routes and the OpenAI-compatible ones. Imports no torch.

Sampling fields left out of a request take the server's defaults (`sampling.max_tokens`, ...).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def text_event(make: Callable[[str], dict]) -> Callable[[str], str]:
    """text -> `json.dumps(make(text))`, the same string, with everything around the text serialized once.

    A stream's events differ only in their text, and dumping each whole dict took about 4 of the API
    process's 40-50 µs per streamed token (benchmarks/api_overhead.py); this dumps just the text."""
    marker = "\x00tuneforge-text\x00"
    parts = json.dumps(make(marker), ensure_ascii=False).split(json.dumps(marker, ensure_ascii=False))
    if len(parts) != 2:  # the marker elsewhere too (or not at all): dump each event whole
        return lambda text: json.dumps(make(text), ensure_ascii=False)
    before, after = parts
    return lambda text: before + json.dumps(text, ensure_ascii=False) + after


class SamplingFields(BaseModel):
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (>= 1).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy; at most 2.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    stop: list[str] | str | None = Field(None, description="String(s) that end generation.")
    ignore_eos: bool = Field(False, description="Generate max_tokens even past end-of-sequence.")


# -- tuneforge's routes ----------------------------------------------------------------------------------
class GenerateRequest(SamplingFields):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, description="The prompt text, used as is (no chat template).")
    stream: bool = Field(True, description="Server-Sent Events (default) or one JSON response.")
    model: str | None = Field(None, description="An adapter's name, or the base model's (default).")


class BatchGenerateRequest(SamplingFields):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(min_length=1, description="Prompts; one result each, in this order.")
    model: str | None = None


class GenerateResponse(BaseModel):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str


class ResultDetail(BaseModel):
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class BatchGenerateResponse(BaseModel):
    results: list[str]
    details: list[ResultDetail]
    latency_ms: float
    model: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody
    partial_text: str | None = None


# -- OpenAI-compatible -----------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIFields(SamplingFields):
    # Fields that OpenAI clients and `vllm bench serve` send and that change nothing here are accepted.
    model_config = ConfigDict(extra="ignore")
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    user: str | None = None
    seed: int | None = None


class CompletionRequest(OpenAIFields):
    prompt: str | list[str] = Field(description="A prompt, or a list of prompts (not with stream).")
    echo: bool = False
    logprobs: int | None = Field(None, le=0, description="Not supported (null or 0).")
    max_tokens: int | None = Field(16, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(OpenAIFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class AdapterLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    path: str = Field(min_length=1, description="Folder inside the server's adapter directory.")


class VLLMAdapterLoad(BaseModel):
    """vLLM's /v1/load_lora_adapter body, so tools written for vLLM work unchanged."""

    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1)


class VLLMAdapterUnload(BaseModel):
    lora_name: str = Field(min_length=1, max_length=128)
