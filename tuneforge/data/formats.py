"""Dataset formats: detect which one a file uses, check every example's fields, and turn each example into
one canonical shape. Imports no torch.

| format            | required fields                                  | optional |
|-------------------|--------------------------------------------------|----------|
| alpaca            | instruction (str), output (str)                  | input, system (str) |
| chat              | messages: [{role: system/user/assistant, content}] | |
| sharegpt          | conversations: [{from: system/human/gpt, value}] | |
| prompt_completion | prompt (str), completion (str)                   | |
| text              | text (str)                                       | |

alpaca, chat and sharegpt become a conversation (a list of messages); prompt_completion keeps its two
strings (concatenated without a template, loss on the completion); text is trained on whole.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text")
REQUIRED = {
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
OPTIONAL_STR = {"alpaca": ("input", "system")}
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class FieldProblem:
    """One thing wrong with one field of an example."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"field '{self.field}': {self.message}"


@dataclass
class Example:
    """The canonical example: a conversation, a prompt/completion pair, or plain text."""

    id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def content(self) -> Any:
        """What the example says, without its id: the key of the train/validation split."""
        if self.messages is not None:
            return self.messages
        if self.text is not None:
            return self.text
        return [self.prompt, self.completion]


def signature(record: dict) -> str | None:
    """The format a record's keys point to, or None."""
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or ("output" in record and "input" in record):
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def detect_format(records: list[dict]) -> str | None:
    """The most common format among the records (None if no record matches any format)."""
    votes = Counter(s for r in records if (s := signature(r)) is not None)
    return votes.most_common(1)[0][0] if votes else None


def describe_formats() -> str:
    return "; ".join(f"{name} ({', '.join(REQUIRED[name])})" for name in FORMATS)


def example_id(record: dict | None, index: int) -> str:
    """An example's identifier: its `id` field when it has one, else `#index` (0-based, in file order).
    Text that is not valid Unicode (a lone surrogate from a "\\ud800" escape) is shown escaped."""
    if isinstance(record, dict):
        value = record.get("id")
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return printable(str(value))
    return f"#{index}"


def printable(text: str) -> str:
    """`text`, with anything UTF-8 cannot encode (lone surrogates) as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unicode_problem(text: str) -> str | None:
    """Why `text` cannot be written as UTF-8 (tokenizers and Arrow refuse it), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode: {printable(text[e.start : e.end])} at character {e.start}"
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _check_str(record: dict, name: str, required: bool, problems: list[FieldProblem]) -> None:
    if name not in record or record[name] is None:
        if required:
            problems.append(FieldProblem(name, "missing"))
        return
    value = record[name]
    if not isinstance(value, str):
        hint = " (serialise structured outputs with json.dumps)" if isinstance(value, (dict, list)) else ""
        problems.append(FieldProblem(name, f"must be a string, got {_type_name(value)}{hint}"))
    elif required and not value.strip():
        problems.append(FieldProblem(name, "is empty"))
    elif (bad := _unicode_problem(value)) is not None:
        problems.append(FieldProblem(name, bad))


def _check_turns(
    record: dict, name: str, role_key: str, text_key: str, roles: dict[str, str], problems: list[FieldProblem]
) -> None:
    turns = record.get(name)
    if turns is None:
        problems.append(FieldProblem(name, "missing"))
        return
    if not isinstance(turns, list) or not turns:
        problems.append(
            FieldProblem(
                name,
                f"must be a non-empty array of messages, got {_type_name(turns)}"
                if not isinstance(turns, list)
                else "is empty",
            )
        )
        return
    mapped = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            problems.append(FieldProblem(where, f"must be an object, got {_type_name(turn)}"))
            continue
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in roles:
            got = "missing" if role is None else f"'{printable(str(role))[:40]}'"
            problems.append(FieldProblem(f"{where}.{role_key}", f"{got}; expected one of {', '.join(roles)}"))
            role = None
        text = turn.get(text_key)
        if not isinstance(text, str):
            got = "missing" if text_key not in turn else f"must be a string, got {_type_name(text)}"
            problems.append(FieldProblem(f"{where}.{text_key}", got))
        elif (bad := _unicode_problem(text)) is not None:
            problems.append(FieldProblem(f"{where}.{text_key}", bad))
        mapped.append(roles.get(role) if role is not None else None)
    if "assistant" not in mapped:
        problems.append(FieldProblem(name, "has no assistant message to learn from"))
    first = next((r for r in mapped if r != "system"), None)
    if first == "assistant":
        problems.append(
            FieldProblem(
                name,
                "starts with an assistant message; the first turn after any "
                "system message must be a user message",
            )
        )


def check_example(record: dict, fmt: str) -> list[FieldProblem]:
    """Every problem with one record under format `fmt`; empty when the example is valid."""
    problems: list[FieldProblem] = []
    if fmt == "chat":
        _check_turns(record, "messages", "role", "content", {r: r for r in ROLES}, problems)
    elif fmt == "sharegpt":
        _check_turns(record, "conversations", "from", "value", SHAREGPT_ROLES, problems)
    else:
        for name in REQUIRED[fmt]:
            _check_str(record, name, True, problems)
        for name in OPTIONAL_STR.get(fmt, ()):
            _check_str(record, name, False, problems)
    return problems


def validate_example(record: dict, fmt: str) -> bool:
    """True if and only if the record has every required field of `fmt`, well-typed."""
    return isinstance(record, dict) and not check_example(record, fmt)


def to_example(record: dict, fmt: str, index: int) -> Example:
    """The canonical form of a record already checked by `check_example`."""
    eid = example_id(record, index)
    if fmt == "alpaca":
        user = record["instruction"]
        if record.get("input"):
            user = f"{user}\n\n{record['input']}"
        messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        return Example(eid, messages=messages)
    if fmt == "chat":
        return Example(
            eid, messages=[{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        )
    if fmt == "sharegpt":
        return Example(
            eid,
            messages=[
                {"role": SHAREGPT_ROLES[m["from"]], "content": m["value"]} for m in record["conversations"]
            ],
        )
    if fmt == "prompt_completion":
        return Example(eid, prompt=record["prompt"], completion=record["completion"])
    return Example(eid, text=record["text"])
