"""Properties 1-4 of the design: dataset parsing, formatting, validation and error identifiers; the
token-length summary and histogram of `tuneforge data stats`."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
from conftest import write_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.config import DataConfig
from tuneforge.data import DatasetPreprocessor
from tuneforge.data.formats import Example, validate_example
from tuneforge.data.stats import histogram, length_summary
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


LENGTHS = st.lists(st.integers(1, 5000), min_size=1, max_size=300)


def _rows(text: str) -> list[tuple[int, int, str, int]]:
    """(low, high, bar, count) of every `low-high | ### count` row, checking the row's shape."""
    rows = []
    for line in text.split("\n"):
        m = re.fullmatch(r" *(\d+)-(\d+) \| (#*) (\d+)", line)
        assert m, f"not a histogram row: {line!r}"
        rows.append((int(m[1]), int(m[2]), m[3], int(m[4])))
    return rows


@settings(max_examples=100, deadline=None)
@given(lengths=LENGTHS)
def test_length_summary_matches_numpy_rounded_to_two_decimals(lengths):
    s = length_summary(lengths)
    assert list(s) == ["count", "min", "mean", "p50", "p90", "p99", "max"]
    assert (s["count"], s["min"], s["max"]) == (len(lengths), min(lengths), max(lengths))
    exact = {"mean": float(np.mean(lengths))}
    exact |= {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 99)}  # linear interpolation
    for key, value in exact.items():
        assert abs(s[key] - value) <= 0.005 + 1e-9, key  # rounded to 2 decimals, not further
        assert s[key] == round(s[key], 2), key  # and to no more than 2


def test_length_summary_on_known_cases():
    assert length_summary([]) == {"count": 0}
    assert length_summary([5]) == {
        "count": 1,
        "min": 5,
        "mean": 5.0,
        "p50": 5.0,
        "p90": 5.0,
        "p99": 5.0,
        "max": 5,
    }
    assert length_summary([2, 1, 1]) == {
        "count": 3,
        "min": 1,
        "mean": 1.33,
        "p50": 1.0,
        "p90": 1.8,
        "p99": 1.98,
        "max": 2,
    }


@settings(max_examples=100, deadline=None)
@given(lengths=LENGTHS)
def test_histogram_bins_cover_the_range_and_count_every_length(lengths):
    rows = _rows(histogram(lengths))
    lo, hi = min(lengths), max(lengths)
    step = max(1, math.ceil((hi - lo + 1) / 10))  # the narrowest equal width that fits in 10 bins
    assert len(rows) <= 10 and rows[0][0] == lo and rows[-1][0] <= hi <= rows[-1][1]
    for i, (low, high, bar, count) in enumerate(rows):
        assert (low, high) == (lo + i * step, lo + (i + 1) * step - 1)
        assert count == sum(low <= n <= high for n in lengths)
        assert set(bar) <= {"#"}
        # bars are proportional to the counts (40 for the largest), and a non-empty bin shows at least one #
        assert len(bar) == max(1 if count else 0, round(40 * count / max(r[3] for r in rows)))
    assert sum(r[3] for r in rows) == len(lengths)
    assert len({line.index("|") for line in histogram(lengths).split("\n")}) == 1  # labels aligned


def test_histogram_on_known_cases():
    assert histogram([]) == "(no examples)"
    assert histogram([7]) == "7-7 | " + "#" * 40 + " 1"
    rows = _rows(histogram([*range(1, 11), *[5] * 99]))  # a range of exactly 10: one value per bin
    assert [(low, high) for low, high, _, _ in rows] == [(i, i) for i in range(1, 11)]
    assert [len(bar) for _, _, bar, _ in rows] == [1, 1, 1, 1, 40, 1, 1, 1, 1, 1]  # 1 of 100 still shows
    assert [count for *_, count in _rows(histogram([1, 2, 2, 3, 10]))] == [1, 2, 1, 0, 0, 0, 0, 0, 0, 1]
    assert _rows(histogram([1, 2, 2, 3, 10]))[3][2] == ""  # an empty bin has no bar
    assert _rows(histogram([0, 21, 25], bins=3, width=10)) == [
        (0, 8, "#####", 1),
        (9, 17, "", 0),
        (18, 26, "#" * 10, 2),
    ]
