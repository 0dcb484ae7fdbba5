"""Format detection, field validation messages, and DatasetPreprocessor.load_dataset/check."""

from __future__ import annotations

import pytest
from conftest import alpaca, write_rows

from tuneforge.config import DataConfig
from tuneforge.data import DatasetPreprocessor
from tuneforge.data.formats import check_example, detect_format, to_example
from tuneforge.errors import DatasetError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"instruction": "a", "output": "b"}, "alpaca"),
        ({"instruction": "a", "input": "x", "output": "b"}, "alpaca"),
        (CHAT, "chat"),
        (SHAREGPT, "sharegpt"),
        ({"prompt": "a", "completion": "b"}, "prompt_completion"),
        ({"text": "a"}, "text"),
    ],
)
def test_format_is_detected_from_fields(record, fmt):
    assert detect_format([record]) == fmt
    assert check_example(record, fmt) == []


def test_detection_follows_the_majority():
    assert detect_format([{"text": "a"}, {"instruction": "a", "output": "b"}, {"text": "c"}]) == "text"


def test_unknown_format_lists_fields_and_known_formats(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DatasetError) as e:
        DatasetPreprocessor(config=DataConfig(train_file=str(path))).load_dataset()
    msg = str(e.value)
    assert "cannot tell the dataset format" in msg and "['answer', 'question']" in msg
    assert "alpaca (instruction, output)" in msg and "data.format=" in msg


@pytest.mark.parametrize(
    ("record", "fmt", "expected"),
    [
        ({"instruction": "a"}, "alpaca", "field 'output': missing"),
        ({"instruction": "  ", "output": "b"}, "alpaca", "field 'instruction': is empty"),
        ({"instruction": "a", "output": {"k": 1}}, "alpaca", "field 'output': must be a string, got object"),
        ({"instruction": "a", "output": "b", "input": 3}, "alpaca", "field 'input': must be a string"),
        ({"messages": []}, "chat", "field 'messages': is empty"),
        ({"messages": "hi"}, "chat", "field 'messages': must be a non-empty array"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "chat",
            "field 'messages[0].role': 'bot'; expected",
        ),
        ({"messages": [{"role": "user"}]}, "chat", "field 'messages[0].content': missing"),
        ({"messages": [{"role": "user", "content": "x"}]}, "chat", "has no assistant message"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "chat", "starts with an assistant message"),
        (
            {"conversations": [{"from": "robot", "value": "x"}]},
            "sharegpt",
            "'conversations[0].from': 'robot'",
        ),
        ({"prompt": "a"}, "prompt_completion", "field 'completion': missing"),
        ({"text": None}, "text", "field 'text': missing"),
    ],
)
def test_field_problems_name_the_field(record, fmt, expected):
    assert any(expected in str(p) for p in check_example(record, fmt)), check_example(record, fmt)


def test_alpaca_becomes_a_conversation_with_input_and_system():
    ex = to_example({"id": 7, "system": "S", "instruction": "I", "input": "X", "output": "O"}, "alpaca", 0)
    assert ex.id == "7"
    assert ex.messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "I\n\nX"},
        {"role": "assistant", "content": "O"},
    ]


def test_sharegpt_roles_map_to_openai_roles():
    assert to_example(SHAREGPT, "sharegpt", 3).messages == CHAT["messages"]
    assert to_example(SHAREGPT, "sharegpt", 3).id == "#3"


def test_load_reports_every_problem_with_location_and_id(tmp_path):
    rows = alpaca(10)
    path = write_rows(tmp_path / "d.jsonl", rows)
    lines = path.read_text().splitlines()
    lines[6] = '{"id": "ex-6", "instruction": "x" "output": "y"}'
    lines[8] = '{"id": "ex-8", "instruction": "x"}'
    path.write_text("\n".join(lines) + "\n")
    loaded = DatasetPreprocessor(config=DataConfig(train_file=str(path))).load_dataset()
    assert len(loaded.examples) == 8
    assert loaded.invalid_ids == ["ex-6", "ex-8"]
    assert loaded.problems[0].startswith(f"{path}:7: example id 'ex-6': malformed JSON: Expecting")
    assert loaded.problems[1] == f"{path}:9: example id 'ex-8': field 'output': missing"


def test_examples_without_id_are_named_by_index(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a"}])
    loaded = DatasetPreprocessor(config=DataConfig(train_file=str(path))).load_dataset()
    assert loaded.problems == [f"{path}:2: example #1: field 'output': missing"]


def test_duplicate_ids_are_reported(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", alpaca(2) + alpaca(1))
    loaded = DatasetPreprocessor(config=DataConfig(train_file=str(path))).load_dataset()
    assert loaded.problems == [f"{path}:3: example id 'ex-0': field 'id': duplicate of {path}:1"]


def test_on_invalid_error_raises_with_every_problem(tmp_path):
    path = write_rows(
        tmp_path / "d.jsonl", [*alpaca(3), {"id": "bad-1"}, {"id": "bad-2", "instruction": "x"}]
    )
    pre = DatasetPreprocessor(config=DataConfig(train_file=str(path)))
    with pytest.raises(DatasetError) as e:
        pre.check(pre.load_dataset())
    assert (
        "3 problems in 2 invalid examples" in str(e.value)
        and "bad-1" in str(e.value)
        and "bad-2" in str(e.value)
    )
    assert "data.on_invalid=skip" in str(e.value)
    assert len(e.value.problems) == 3  # bad-1 misses two fields


def test_on_invalid_skip_keeps_the_valid_ones_and_lists_the_rest(tmp_path, caplog):
    path = write_rows(tmp_path / "d.jsonl", [*alpaca(3), {"id": "bad-1"}])
    pre = DatasetPreprocessor(config=DataConfig(train_file=str(path), on_invalid="skip"))
    loaded = pre.load_dataset()
    pre.check(loaded)  # does not raise
    assert [e.id for e in loaded.examples] == ["ex-0", "ex-1", "ex-2"]
    assert "skipping 1 invalid examples" in caplog.text and "bad-1" in caplog.text


def test_named_format_overrides_detection(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a", "prompt": "p", "completion": "c"}])
    loaded = DatasetPreprocessor(
        config=DataConfig(train_file=str(path), format="prompt_completion")
    ).load_dataset()
    assert loaded.format == "prompt_completion" and loaded.examples[0].completion == "c"


def test_validate_example_and_format_instruction_without_tokenizer():
    pre = DatasetPreprocessor()
    assert pre.validate_example({"instruction": "a", "output": "b"})
    assert not pre.validate_example({"instruction": "a"})
    assert not pre.validate_example({"unknown": 1})
    out = pre.format_instruction({"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"})
    assert out["text"] == "### Instruction:\nSay hi\n\nto Bob\n\n### Response:\nHi Bob"
    ((start, end),) = out["spans"]
    assert out["text"][start:end] == "Hi Bob"
    with pytest.raises(DatasetError, match="field 'output': missing"):
        pre.format_instruction({"id": "q1", "instruction": "a"})
