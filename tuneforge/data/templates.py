"""Turn a canonical example into training text plus the character spans that carry loss, then into token
ids and labels. Imports no torch (a tokenizer is passed in).

Loss on the response only: every assistant turn (its content and the template's end-of-turn marker, so
the model learns to stop), or the completion of a prompt/completion pair. Spans come from rendering the
conversation one turn at a time, so they are exact for any chat template that renders prefixes
consistently; a template that does not is reported instead of producing wrong masks.

The plain template, used when the tokenizer has no chat template (or `data.chat_template=plain`):

    ### System:
    {system}

    ### Instruction:
    {user}

    ### Response:
    {assistant}{eos}

Blocks are separated by a blank line; generation starts after "### Response:\\n".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuneforge.data.formats import Example

PLAIN_HEADERS = {"system": "### System:", "user": "### Instruction:", "assistant": "### Response:"}
IGNORE_INDEX = -100  # label of a token that carries no loss (PyTorch's cross-entropy default)


class TemplateError(ValueError):
    """The chat template cannot render this conversation, or renders prefixes inconsistently."""


@dataclass
class Rendered:
    """Training text and the [start, end) character spans that carry loss."""

    text: str
    spans: list[tuple[int, int]]
    uses_chat_template: bool = False


def render_plain(messages: list[dict[str, str]], eos: str = "") -> Rendered:
    """The plain template: headed blocks; each assistant turn ends with `eos`."""
    blocks, spans, pos = [], [], 0
    for m in messages:
        head = f"{PLAIN_HEADERS[m['role']]}\n"
        body = m["content"] + (eos if m["role"] == "assistant" else "")
        if m["role"] == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(body)))
        blocks.append(head + body)
        pos += len(head) + len(body) + 2  # the "\n\n" that joins blocks
    return Rendered("\n\n".join(blocks), spans)


def plain_generation_prompt(messages: list[dict[str, str]]) -> str:
    """The plain-template prompt that asks the model for the next assistant turn."""
    prefix = render_plain(messages).text
    return (prefix + "\n\n" if prefix else "") + PLAIN_HEADERS["assistant"] + "\n"


ApplyTemplate = Callable[[list[dict[str, str]], bool], str]


def render_chat(messages: list[dict[str, str]], apply: ApplyTemplate) -> Rendered:
    """Render with a chat template; `apply(messages, add_generation_prompt)` returns the text."""
    try:
        full = apply(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = apply(messages[:i], True)
            upto = apply(messages[: i + 1], False)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    "the chat template does not render the conversation's prefixes consistently, so the "
                    "response tokens cannot be located; use data.chat_template=plain or data.train_on=all"
                )
            spans.append((len(before), len(upto)))
    except TemplateError:
        raise
    except Exception as e:  # jinja raises its own errors for conversations a template refuses
        raise TemplateError(f"the chat template rejected this conversation: {e}") from None
    return Rendered(full, spans, uses_chat_template=True)


def render_example(
    example: Example, tokenizer, chat_template: str = "auto", train_on: str = "response"
) -> Rendered:
    """Render one example for training with `tokenizer` (chat_template: auto, tokenizer or plain)."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    if example.messages is not None:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template == "tokenizer" and not has_template:
            raise TemplateError(
                "data.chat_template=tokenizer but the tokenizer has no chat template; "
                "use data.chat_template=auto or plain"
            )
        if has_template and chat_template != "plain":

            def apply(msgs, gen):
                return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

            rendered = render_chat(example.messages, apply)
        else:
            rendered = render_plain(example.messages, eos)
    elif example.text is not None:
        text = example.text + eos
        rendered = Rendered(text, [(0, len(text))])
    else:
        assert example.prompt is not None and example.completion is not None
        text = example.prompt + example.completion + eos
        rendered = Rendered(text, [(len(example.prompt), len(text))])
    if train_on == "all":
        rendered.spans = [(0, len(rendered.text))]
    return rendered


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def labels_for(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Label each token with its id if it starts inside a span, else IGNORE_INDEX.

    Tokens the tokenizer adds itself (BOS) have an empty offset and never carry loss.
    """
    labels = []
    for tok, (start, end) in zip(input_ids, offsets, strict=True):
        inside = end > start and any(s <= start < e for s, e in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return labels


def encode_batch(rendered: list[Rendered], tokenizer) -> list[Encoded]:
    """Tokenize many rendered examples in one call (fast tokenizers run it in parallel)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError(
            "response-only labels need a fast tokenizer (offset mapping); "
            f"{type(tokenizer).__name__} is not one"
        )
    out: dict[int, Encoded] = {}
    # A chat template writes its own BOS; the plain template relies on the tokenizer adding it.
    for add_special in (True, False):
        idx = [i for i, r in enumerate(rendered) if r.uses_chat_template != add_special]
        if not idx:
            continue
        enc = tokenizer(
            [rendered[i].text for i in idx], add_special_tokens=add_special, return_offsets_mapping=True
        )
        for j, i in enumerate(idx):
            ids = list(enc["input_ids"][j])
            out[i] = Encoded(ids, labels_for(ids, enc["offset_mapping"][j], rendered[i].spans))
    return [out[i] for i in range(len(rendered))]
