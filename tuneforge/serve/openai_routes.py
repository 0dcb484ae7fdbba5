"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions.

The official `openai` client, LangChain's ChatOpenAI and `vllm bench serve` work against these
unchanged. `model` picks the base model (its served name) or an adapter by name. Streams end with
`data: [DONE]`; an error after the first event is one `data: {"error": ...}` event, then the stream ends.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tuneforge.engines.base import InvalidRequest
from tuneforge.serve.errors import error_body
from tuneforge.serve.protocol import ChatCompletionRequest, CompletionRequest, Usage, new_id, now, text_event
from tuneforge.serve.routes import ERRORS, service
from tuneforge.serve.service import with_cancellation

router = APIRouter(prefix="/v1")


@router.get("/models")
async def models(request: Request):
    """503 with Retry-After while the model loads: clients that wait for this route (`vllm bench serve`
    does) then start only when requests can succeed."""
    svc = service(request)
    svc.require_engine()
    base = svc.settings.name
    data = [
        {"id": base, "object": "model", "created": now(), "owned_by": "tuneforge", "root": svc.settings.model}
    ]
    for name in svc.model_names()[1:]:
        data.append(
            {"id": name, "object": "model", "created": now(), "owned_by": "tuneforge", "parent": base}
        )
    return {"object": "list", "data": data}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    ).model_dump()


def _error_event(e) -> dict:
    return {"error": error_body(e)}


@router.post("/completions", responses=ERRORS)
async def completions(body: CompletionRequest, request: Request):
    svc = service(request)
    sampling, adapter = svc.sampling(body), svc.adapter_for(body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or any(not p for p in prompts):
        raise InvalidRequest(
            "prompt must be a non-empty string or a list of non-empty strings", param="prompt"
        )
    rid, created = new_id("cmpl"), now()
    echo = (lambda i: prompts[i]) if body.echo else (lambda i: "")

    def chunk(text, finish=None, index=0):
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice],
        }

    if body.stream:
        if len(prompts) != 1:
            raise InvalidRequest("stream=true takes one prompt; send a list without stream", param="prompt")
        chunks = await with_cancellation(request, svc.start_stream(prompts[0], sampling, adapter))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        first, text_only = [True], text_event(chunk)

        def on_chunk(c):
            text = (echo(0) if first[0] else "") + c.text
            first[0] = False
            if c.finish_reason is None:  # the common event: only its text differs
                return [text_only(text)] if text else []
            events = [chunk(text, c.finish_reason)]
            if c.finish_reason and include_usage:
                usage = _usage(c.prompt_tokens, c.completion_tokens)
                events.append({**chunk("")} | {"choices": [], "usage": usage})
            return events

        return svc.sse(chunks, on_chunk, _error_event, done="[DONE]")
    if len(prompts) == 1:
        done = [await with_cancellation(request, svc.complete(prompts[0], sampling, adapter))]
    else:
        done = await with_cancellation(request, svc.complete_batch(prompts, sampling, adapter))
    choices = [
        {"index": i, "text": echo(i) + c.text, "logprobs": None, "finish_reason": c.finish_reason}
        for i, c in enumerate(done)
    ]
    usage = _usage(sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done))
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": usage,
    }


@router.post("/chat/completions", responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    svc = service(request)
    sampling = svc.sampling(body, max_tokens=body.max_completion_tokens)
    adapter = svc.adapter_for(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        prompt = svc.require_engine().apply_chat_template(messages)
    except Exception as e:  # e.g. a template that rejects the role order
        raise InvalidRequest(f"cannot apply the chat template: {e}", param="messages") from None
    rid, created = new_id("chatcmpl"), now()

    def chunk(delta, finish=None):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [choice],
        }

    if body.stream:
        chunks = await with_cancellation(request, svc.start_stream(prompt, sampling, adapter))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        first, content = [True], text_event(lambda text: chunk({"content": text}))

        def on_chunk(c):
            events = []
            if first[0]:
                events.append(chunk({"role": "assistant", "content": ""}))
                first[0] = False
            if c.text:
                events.append(content(c.text))
            if c.finish_reason:
                events.append(chunk({}, c.finish_reason))
                if include_usage:
                    usage = _usage(c.prompt_tokens, c.completion_tokens)
                    events.append(chunk({}) | {"choices": [], "usage": usage})
            return events

        return svc.sse(chunks, on_chunk, _error_event, done="[DONE]")
    c = await with_cancellation(request, svc.complete(prompt, sampling, adapter))
    message = {"role": "assistant", "content": c.text}
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": c.finish_reason}],
        "usage": _usage(c.prompt_tokens, c.completion_tokens),
    }
