"""Preparation with a real tokenizer: response-only labels, templates, truncation, split, statistics."""

from __future__ import annotations

import copy
import json
import os

import datasets
import pytest
from conftest import alpaca, write_rows

from tuneforge.config import DataConfig
from tuneforge.data import DatasetPreprocessor
from tuneforge.data.formats import Example
from tuneforge.data.split import assign_validation, split_score
from tuneforge.data.templates import IGNORE_INDEX, TemplateError, render_chat, render_example
from tuneforge.errors import DatasetError


def prepare(tokenizer, path, **kw):
    return DatasetPreprocessor(tokenizer, DataConfig(train_file=str(path), **kw)).prepare()


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE_INDEX]
    )


def all_rows(prepared):
    return list(prepared.train) + list(prepared.validation)


def test_loss_only_on_the_response_with_the_chat_template(tokenizer, tmp_path):
    rows = [{"id": "a", "instruction": "Name a colour.", "input": "Not red.", "output": "Blue, of course."}]
    prepared = prepare(tokenizer, write_rows(tmp_path / "d.jsonl", rows), validation_fraction=0.0)
    (row,) = all_rows(prepared)
    full = tokenizer.decode(row["input_ids"])
    assert full.startswith("<|im_start|>system\n")  # the tokenizer's chat template, with its default system
    assert "<|im_start|>user\nName a colour.\n\nNot red.<|im_end|>" in full
    assert trained_text(tokenizer, row) == "Blue, of course.<|im_end|>\n"
    assert row["labels"][: len(row["labels"]) // 2] == [IGNORE_INDEX] * (len(row["labels"]) // 2)


def test_every_assistant_turn_of_a_multi_turn_chat_carries_loss(tokenizer, tmp_path):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Double it."},
        {"role": "assistant", "content": "8"},
    ]
    prepared = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", [{"messages": msgs}]), validation_fraction=0
    )
    (row,) = all_rows(prepared)
    assert trained_text(tokenizer, row) == "4<|im_end|>\n8<|im_end|>\n"


def test_train_on_all_puts_loss_on_every_token(tokenizer, tmp_path):
    prepared = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", alpaca(1)), train_on="all", validation_fraction=0
    )
    (row,) = all_rows(prepared)
    assert row["labels"] == row["input_ids"]


def test_plain_template_when_the_tokenizer_has_none(tokenizer, tmp_path):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    rows = [{"id": "a", "instruction": "Say hi.", "output": "Hi!"}]
    prepared = prepare(tok, write_rows(tmp_path / "d.jsonl", rows), validation_fraction=0)
    (row,) = all_rows(prepared)
    assert tok.decode(row["input_ids"]) == "### Instruction:\nSay hi.\n\n### Response:\nHi!<|im_end|>"
    assert trained_text(tok, row) == "Hi!<|im_end|>"
    assert prepared.stats["template"] == "plain"


def test_plain_template_can_be_forced(tokenizer, tmp_path):
    prepared = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", alpaca(1)), chat_template="plain", validation_fraction=0
    )
    assert tokenizer.decode(all_rows(prepared)[0]["input_ids"]).startswith("### Instruction:\n")


def test_tokenizer_template_required_but_missing_is_an_error(tokenizer, tmp_path):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(DatasetError, match="has no chat template"):
        prepare(tok, write_rows(tmp_path / "d.jsonl", alpaca(2)), chat_template="tokenizer")


def test_prompt_completion_is_concatenated_and_masked(tokenizer, tmp_path):
    rows = [{"prompt": "The sky is", "completion": " blue."}]
    prepared = prepare(tokenizer, write_rows(tmp_path / "d.jsonl", rows), validation_fraction=0)
    (row,) = all_rows(prepared)
    assert tokenizer.decode(row["input_ids"]) == "The sky is blue.<|im_end|>"
    assert trained_text(tokenizer, row) == " blue.<|im_end|>"


def test_text_is_trained_whole(tokenizer, tmp_path):
    prepared = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", [{"text": "Plain text."}]), validation_fraction=0
    )
    (row,) = all_rows(prepared)
    assert trained_text(tokenizer, row) == "Plain text.<|im_end|>"


def long_rows():
    return [{"id": "long", "instruction": "Repeat.", "output": "word " * 200}, *alpaca(3)]


def test_overlong_examples_are_truncated_and_counted(tokenizer, tmp_path):
    prepared = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", long_rows()), max_seq_length=64, validation_fraction=0
    )
    assert prepared.stats["truncated"] == 1 and prepared.stats["dropped_overlong"] == 0
    assert max(r["length"] for r in all_rows(prepared)) == 64
    assert len(all_rows(prepared)) == 4


def test_overlong_examples_can_be_dropped_and_counted(tokenizer, tmp_path):
    prepared = prepare(
        tokenizer,
        write_rows(tmp_path / "d.jsonl", long_rows()),
        max_seq_length=64,
        overlong="drop",
        validation_fraction=0,
    )
    assert prepared.stats["dropped_overlong"] == 1 and prepared.stats["truncated"] == 0
    assert sorted(r["id"] for r in all_rows(prepared)) == ["ex-0", "ex-1", "ex-2"]


def test_truncation_that_leaves_no_response_drops_the_example(tokenizer, tmp_path):
    rows = [{"id": "p", "instruction": "word " * 100, "output": "answer"}, *alpaca(2)]
    prepared = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", rows), max_seq_length=40, validation_fraction=0
    )
    assert prepared.stats["dropped_no_response"] == 1
    assert "p" not in [r["id"] for r in all_rows(prepared)]


def test_nothing_left_is_an_error(tokenizer, tmp_path):
    with pytest.raises(DatasetError, match="no training examples left"):
        prepare(
            tokenizer, write_rows(tmp_path / "d.jsonl", long_rows()[:1]), max_seq_length=16, overlong="drop"
        )


def test_a_template_that_refuses_a_conversation_is_reported_with_the_example(tokenizer, tmp_path):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    rows = [*alpaca(2), {"id": "sys", "system": "S", "instruction": "I", "output": "O"}]
    path = write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetError, match=r"d.jsonl:3: example id 'sys': the chat template rejected"):
        prepare(tok, path)
    prepared = prepare(tok, path, on_invalid="skip", validation_fraction=0)
    assert prepared.stats["template_failures_skipped"] == 1 and len(prepared.train) == 2


def test_inconsistent_template_is_detected_instead_of_masking_wrongly():
    def apply(messages, add_generation_prompt):  # renders the last message differently
        parts = [m["content"] for m in messages]
        if parts and not add_generation_prompt:
            parts[-1] = f"<last>{parts[-1]}"
        return "|".join(parts)

    msgs = [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "b"},
    ]
    with pytest.raises(TemplateError, match="prefixes consistently"):
        render_chat(msgs, apply)


def test_split_is_deterministic_and_stable_when_examples_are_appended(tokenizer, tmp_path):
    first = prepare(tokenizer, write_rows(tmp_path / "a.jsonl", alpaca(200)), validation_fraction=0.2)
    again = prepare(tokenizer, write_rows(tmp_path / "b.jsonl", alpaca(200)), validation_fraction=0.2)
    assert first.validation["id"] == again.validation["id"]
    grown = prepare(tokenizer, write_rows(tmp_path / "c.jsonl", alpaca(300)), validation_fraction=0.2)
    old = {f"ex-{i}" for i in range(200)}
    assert [i for i in grown.validation["id"] if i in old] == first.validation["id"]
    assert 20 <= len(first.validation) <= 60  # about 20% of 200
    other_seed = prepare(
        tokenizer, write_rows(tmp_path / "d.jsonl", alpaca(200)), validation_fraction=0.2, split_seed=7
    )
    assert other_seed.validation["id"] != first.validation["id"]


def test_the_split_is_the_same_in_every_process_and_pinned():
    """The split must not depend on anything a new process changes (Python's salted hash(), say)."""
    import subprocess
    import sys

    code = (
        "from tuneforge.data.split import assign_validation;"
        "print(''.join('v' if v else 't' for v in assign_validation([{'i': i} for i in range(24)], 0.25, 7)))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert runs == {"ttvttvvvvvtttvttvtvvttvt"}  # pinned: a change of hash or seed handling shows here


def test_duplicates_never_straddle_the_split():
    contents = [["same"]] * 10 + [[str(i)] for i in range(100)]
    chosen = assign_validation(contents, 0.3, seed=1)
    assert len(set(chosen[:10])) == 1


def test_tiny_datasets_still_get_one_validation_example():
    assert sum(assign_validation([["a"], ["b"]], 0.1, seed=0)) == 1
    assert sum(assign_validation([["a"], ["b"]], 0.0, seed=0)) == 0


def test_a_fraction_of_one_still_leaves_the_highest_scoring_example_for_training():
    contents = [["a"], ["b"], ["c"], ["d"]]
    chosen = assign_validation(contents, 1.0, seed=0)
    scores = [split_score(c, 0) for c in contents]
    assert chosen == [s != max(scores) for s in scores]  # exactly one False, the highest score
    assert all(isinstance(c, bool) for c in chosen)


def test_the_split_does_not_depend_on_key_order_and_is_pinned_for_non_ascii_text():
    """A record read with its fields in another order (a CSV's columns, say) lands on the same side, and
    the split of non-ASCII text is as stable across versions as that of ASCII text."""
    assert split_score({"q": "x", "a": "y"}, 7) == split_score({"a": "y", "q": "x"}, 7)
    reordered = [{"a": "ß", "q": f"café {i}"} for i in range(24)]
    chosen = assign_validation([{"q": f"café {i}", "a": "ß"} for i in range(24)], 0.25, 7)
    assert chosen == assign_validation(reordered, 0.25, 7)
    assert "".join("v" if v else "t" for v in chosen) == "tttttttttttttvtttvtttttt"


def test_stats_and_saved_splits(tokenizer, tmp_path):
    rows = [*alpaca(40), {"id": "bad"}]
    prepared = prepare(tokenizer, write_rows(tmp_path / "d.jsonl", rows), on_invalid="skip")
    s = prepared.stats
    assert (s["records"], s["valid"], s["invalid_skipped"], s["invalid_ids"]) == (41, 40, 1, ["bad"])
    assert s["train_examples"] + s["validation_examples"] == 40
    lengths = list(prepared.train["length"]) + list(prepared.validation["length"])
    assert s["tokens"] == sum(lengths)
    assert s["token_lengths"]["max"] == max(lengths) and s["token_lengths"]["min"] == min(lengths)
    assert 0 < s["trainable_tokens"] < s["tokens"]
    out = prepared.save(tmp_path / "prepared")
    assert datasets.load_from_disk(str(out / "train"))["id"] == prepared.train["id"]
    assert json.loads((out / "stats.json").read_text())["sha256"] == s["sha256"]


def test_render_example_appends_eos_to_text(tokenizer):
    rendered = render_example(Example("t", text="abc"), tokenizer)
    assert rendered.text == "abc<|im_end|>" and rendered.spans == [(0, len(rendered.text))]
