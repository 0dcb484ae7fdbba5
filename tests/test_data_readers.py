"""Reading files: every format, locations (file:line or row), and the errors for unusable files."""

from __future__ import annotations

import json
import os

import pytest
from conftest import alpaca, write_rows

from tuneforge.data.readers import read_records
from tuneforge.errors import DatasetError


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_every_file_type_reads_every_record_in_order(tmp_path, kind):
    rows = alpaca(5)
    path = write_rows(tmp_path / f"d.{kind}", rows)
    records = list(read_records(str(path)))
    assert [r.data["id"] for r in records] == [r["id"] for r in rows]
    assert [r.data["output"] for r in records] == [r["output"] for r in rows]


def test_jsonl_locations_are_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    records = list(read_records(str(path)))
    assert [str(r.location) for r in records] == [f"{path}:1", f"{path}:3"]
    assert [r.index for r in records] == [0, 1]


def test_csv_locations_are_line_numbers_even_with_multiline_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\n"two\nlines",a\nsecond,b\n')
    records = list(read_records(str(path)))
    assert [r.location.line for r in records] == [2, 4]
    assert records[0].data["instruction"] == "two\nlines"


def test_csv_row_with_extra_cells_is_reported(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\na,b,c\n")
    (record,) = read_records(str(path))
    assert record.data is None and "3 cells, the header has 2" in record.error


def test_csv_messages_column_is_json_decoded(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = write_rows(tmp_path / "d.csv", [{"messages": msgs}])
    (record,) = read_records(str(path))
    assert record.data["messages"] == msgs


def test_malformed_json_line_reports_the_parser_message(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b",, }\n')
    records = list(read_records(str(path)))
    assert records[1].data is None and records[1].location.line == 2
    assert "malformed JSON" in records[1].error and "column" in records[1].error


def test_non_object_line_is_reported(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('["a", "b"]\n')
    (record,) = read_records(str(path))
    assert record.error == "expected a JSON object, got an array"


def test_json_lines_saved_as_json_are_read(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [r.data["text"] for r in read_records(str(path))] == ["a", "b"]


def test_json_wrapped_in_one_key_is_read(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [{"text": "a"}]}))
    assert [r.data["text"] for r in read_records(str(path))] == ["a"]


def test_json_that_is_not_an_array_is_an_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('"just a string"')
    with pytest.raises(DatasetError, match=r"d.json: expected a JSON array of objects, got a string"):
        list(read_records(str(path)))


def test_empty_file_says_so(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("")
    with pytest.raises(DatasetError, match=r"d.jsonl: file is empty \(expected one JSON object per line\)"):
        list(read_records(str(path)))


def test_file_of_blank_lines_has_no_examples(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DatasetError, match="no examples"):
        list(read_records(str(path)))


def test_missing_file_suggests_a_close_name(tmp_path):
    write_rows(tmp_path / "train.jsonl", alpaca(1))
    with pytest.raises(DatasetError, match=r"trian.jsonl: file not found; did you mean .*train.jsonl"):
        list(read_records(str(tmp_path / "trian.jsonl")))


def test_unknown_file_type_lists_the_known_ones(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello\n")
    with pytest.raises(DatasetError, match=r"unknown file type '.txt'; expected .*\.jsonl"):
        list(read_records(str(path)))


def test_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="is a folder"):
        list(read_records(str(tmp_path)))


def test_binary_file_is_unreadable(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DatasetError, match=r"d.jsonl: cannot read file: not UTF-8"):
        list(read_records(str(path)))


def test_corrupt_parquet_is_an_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        list(read_records(str(path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied_says_so(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", alpaca(1))
    path.chmod(0)
    with pytest.raises(DatasetError, match="cannot read file"):
        list(read_records(str(path)))


def test_unreachable_hub_dataset_names_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"hub dataset 'nobody/no-such-dataset' \(split 'train'\)"):
        list(read_records("nobody/no-such-dataset"))
