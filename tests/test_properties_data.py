"""Properties 1-4 of the design: dataset parsing, formatting, validation and error identifiers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from conftest import write_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.config import DataConfig
from tuneforge.data import DatasetPreprocessor
from tuneforge.data.formats import Example, validate_example
from tuneforge.data.templates import render_example, render_plain

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Any text but NUL and lone surrogates (neither survives UTF-8 files or CSV).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
NONBLANK = TEXT.filter(lambda s: s.strip())
PAIRS = st.lists(st.tuples(NONBLANK, TEXT, NONBLANK), min_size=1, max_size=8)


def as_record(kind: str, instruction: str, inp: str, output: str, i: int) -> dict:
    prompt = f"{instruction}\n\n{inp}" if inp else instruction
    if kind == "alpaca":
        return {"id": f"r{i}", "instruction": instruction, "input": inp, "output": output}
    if kind == "chat":
        return {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}],
        }
    if kind == "sharegpt":
        return {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": output}],
        }
    return {"id": f"r{i}", "prompt": prompt, "completion": output}


# Feature: llm-fine-tuning-inference, Property 1: Dataset parsing extracts all pairs
@SETTINGS
@given(
    pairs=PAIRS,
    kind=st.sampled_from(["alpaca", "chat", "sharegpt", "prompt_completion"]),
    file_type=st.sampled_from(["jsonl", "json", "csv", "parquet"]),
)
def test_property_1_parsing_extracts_all_pairs(pairs, kind, file_type):
    rows = [as_record(kind, *p, i) for i, p in enumerate(pairs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_rows(Path(tmp) / f"d.{file_type}", rows)
        loaded = DatasetPreprocessor(config=DataConfig(train_file=str(path))).load_dataset()
    assert loaded.format == kind and loaded.problems == []
    got = []
    for ex in loaded.examples:
        if ex.messages is not None:
            got.append((ex.messages[-2]["content"], ex.messages[-1]["content"]))
        else:
            got.append((ex.prompt, ex.completion))
    expected = [(f"{ins}\n\n{inp}" if inp else ins, out) for ins, inp, out in pairs]
    assert got == expected
    assert [ex.id for ex in loaded.examples] == [f"r{i}" for i in range(len(pairs))]


# Feature: llm-fine-tuning-inference, Property 2: Formatted output contains both sections
@SETTINGS
@given(instruction=NONBLANK, response=NONBLANK, use_chat_template=st.booleans())
def test_property_2_formatted_output_contains_both_sections(
    tokenizer, instruction, response, use_chat_template
):
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
    if use_chat_template:
        rendered = render_example(Example("p2", messages=messages), tokenizer, "tokenizer")
    else:
        rendered = render_plain(messages, eos="</s>")
    text = rendered.text
    assert instruction in text and response in text
    # the response section is exactly what carries loss, and it comes after the instruction
    ((start, _),) = rendered.spans
    assert text[start:].startswith(response)
    assert instruction in text[:start]


def record_with(fields: dict, present: set[str]) -> dict:
    return {k: v for k, v in fields.items() if k in present}


VALUE = st.one_of(
    NONBLANK, st.just(""), st.just("   "), st.none(), st.integers(), st.lists(st.integers(), max_size=2)
)


def oracle(fmt: str, record: dict) -> bool:
    """Independent statement of the rule: required fields present as non-blank strings; optional ones,
    when present and not null, are strings."""
    required = {
        "alpaca": ["instruction", "output"],
        "prompt_completion": ["prompt", "completion"],
        "text": ["text"],
    }[fmt]
    optional = {"alpaca": ["input", "system"]}.get(fmt, [])
    ok_required = all(isinstance(record.get(k), str) and record[k].strip() for k in required)
    ok_optional = all(record.get(k) is None or isinstance(record[k], str) for k in optional)
    return ok_required and ok_optional


# Feature: llm-fine-tuning-inference, Property 3: Validation identifies required fields
@SETTINGS
@given(
    fmt=st.sampled_from(["alpaca", "prompt_completion", "text"]),
    values=st.fixed_dictionaries(
        {k: VALUE for k in ["instruction", "input", "output", "system", "prompt", "completion", "text"]}
    ),
    present=st.sets(
        st.sampled_from(["instruction", "input", "output", "system", "prompt", "completion", "text", "id"])
    ),
)
def test_property_3_validation_identifies_required_fields(fmt, values, present):
    record = record_with({**values, "id": "x"}, present)
    assert validate_example(record, fmt) == oracle(fmt, record)
    assert DatasetPreprocessor().validate_example(record, fmt) == oracle(fmt, record)


IDS = st.one_of(st.from_regex(r"[A-Za-z][\w.:-]{0,15}", fullmatch=True), st.integers(0, 10**9))
BREAKAGE = st.sampled_from(
    ["missing_output", "wrong_type", "empty_instruction", "malformed_json", "bad_role", "no_id"]
)


# Feature: llm-fine-tuning-inference, Property 4: Invalid data errors include identifiers
@SETTINGS
@given(
    ids=st.lists(IDS, min_size=1, max_size=6, unique_by=str),
    breakage=st.lists(BREAKAGE, min_size=6, max_size=6),
    file_type=st.sampled_from(["jsonl", "json"]),
)
def test_property_4_invalid_data_errors_include_identifiers(ids, breakage, file_type):
    lines, expected = [], []
    for i, (eid, how) in enumerate(zip(ids, breakage[: len(ids)], strict=True)):
        good = {"id": eid, "instruction": "Do it.", "output": "Done."}
        if how == "missing_output":
            record = {k: v for k, v in good.items() if k != "output"}
        elif how == "wrong_type":
            record = {**good, "output": {"x": 1}}
        elif how == "empty_instruction":
            record = {**good, "instruction": " "}
        elif how == "bad_role":
            record = {"id": eid, "messages": [{"role": "robot", "content": "x"}], "instruction": "Do it."}
        elif how == "no_id":
            record = {"instruction": "Do it."}
        else:
            record = None
        text = json.dumps(record) if record is not None else json.dumps(good)[:-1] + ",,}"
        if how == "malformed_json" and file_type == "json":  # a JSON array cannot hold a broken item
            record, text = {"id": eid, "instruction": 5, "output": "x"}, None
        lines.append((record, text))
        expected.append(f"#{i}" if how == "no_id" else str(eid))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d.{file_type}"
        if file_type == "jsonl":
            path.write_text("\n".join(text for _, text in lines) + "\n")
        else:
            path.write_text(json.dumps([record for record, _ in lines]))
        loaded = DatasetPreprocessor(config=DataConfig(train_file=str(path), format="alpaca")).load_dataset()
    assert loaded.examples == []
    for i, eid in enumerate(expected):
        mine = [p for p in loaded.problems if (f":{i + 1}: " if file_type == "jsonl" else f":row {i}: ") in p]
        assert mine, (i, loaded.problems)
        assert all(eid in p for p in mine)
