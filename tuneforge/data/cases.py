"""Test cases from a dataset file: what evaluation scores and benchmarks send.

The prompt is the conversation up to its last assistant turn (rendered with the model's chat template, or
the plain template), the reference is that turn; prompt/completion data gives both directly. Plain text has
no reference: only perplexity applies to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config import DataConfig
from tuneforge.data.formats import Example
from tuneforge.data.templates import plain_generation_prompt
from tuneforge.errors import DatasetError


class PlainTextData(DatasetError):
    """Plain text has no reference answers: only perplexity applies to it."""


@dataclass
class TestCase:
    id: str
    prompt: str
    reference: str
    messages: list[dict[str, str]] = field(default_factory=list)


def case_from_example(example: Example, tokenizer=None, chat_template: str = "auto") -> TestCase:
    """The prompt (everything before the last assistant turn) and its reference (that turn)."""
    if example.messages is not None:
        last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        context, reference = example.messages[:last], example.messages[last]["content"]
        use_template = (
            tokenizer is not None and getattr(tokenizer, "chat_template", None) and chat_template != "plain"
        )
        prompt = (
            tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
            if use_template
            else plain_generation_prompt(context)
        )
        return TestCase(example.id, prompt, reference, context)
    if example.prompt is not None:
        return TestCase(example.id, example.prompt, example.completion or "")
    raise PlainTextData(
        f"example {example.id}: plain text has no reference to score generation against; "
        "task metrics need alpaca, chat, sharegpt or prompt_completion data"
    )


def load_test_cases(path: str | None, tokenizer=None, data: DataConfig | None = None) -> list[TestCase]:
    """Test cases from a data file; missing or empty test data fails fast, saying what was expected."""
    from tuneforge.data import DatasetPreprocessor

    if not path:
        raise DatasetError(
            "no test data: set data.test_file (a .jsonl/.json/.csv/.parquet file of "
            "alpaca, chat, sharegpt or prompt_completion examples) or pass --data"
        )
    config = DataConfig(**{**vars(data or DataConfig()), "train_file": path})
    pre = DatasetPreprocessor(tokenizer, config)
    loaded = pre.load_dataset(path)
    pre.check(loaded)
    return [case_from_example(e, tokenizer, config.chat_template) for e in loaded.examples]
