"""Read dataset files (JSONL, JSON, CSV, Parquet) or hub datasets into records that remember where they
came from, so every later problem can name the file and line (or row). Imports no torch.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import DatasetError

FILE_TYPES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_ID_IN_TEXT = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')
# Columns that hold lists of messages; in a CSV they arrive as JSON text.
JSON_COLUMNS = ("messages", "conversations")
# Text files are read as UTF-8; a leading byte-order mark (Excel's "CSV UTF-8", Notepad) is dropped.
ENCODING = "utf-8-sig"
CSV_FIELD_LIMIT = 1 << 30  # characters in one CSV cell; the csv module's default (131,072) is too low


@dataclass(frozen=True)
class Location:
    """Where a record came from: `source:line 7` for text files, `source:row 3` for tables."""

    source: str
    line: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.source}:{self.line}"
        return f"{self.source}:row {self.row}"


@dataclass
class Record:
    """One raw example. `data` is None when the record could not be parsed (`error` says why)."""

    index: int
    location: Location
    data: dict[str, Any] | None
    error: str | None = None
    id_hint: str | None = None  # the "id" read from a line that is not valid JSON, if it can be seen


def file_type(path: Path) -> str:
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(
            f"{path}: unknown file type '{path.suffix}'; expected "
            f"{', '.join(sorted(set(FILE_TYPES)))}, or a hub dataset name"
        )
    return kind


def is_local(source: str) -> bool:
    """A path that exists, or that looks like one (has a file extension or a path prefix)."""
    p = Path(source).expanduser()
    return p.exists() or p.suffix.lower() in FILE_TYPES or source.startswith((".", "/", "~"))


def read_records(source: str, hub_split: str = "train") -> Iterator[Record]:
    """Yield every record of a local file or a hub dataset, in order."""
    if not is_local(source):
        yield from _read_hub(source, hub_split)
        return
    path = Path(source).expanduser()
    if not path.exists():
        siblings = [p.name for p in path.parent.glob("*")] if path.parent.is_dir() else []
        near = difflib.get_close_matches(path.name, siblings, n=1)
        hint = f"; did you mean {path.parent / near[0]}?" if near else ""
        raise DatasetError(f"{path}: file not found{hint}")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder; name a .jsonl, .json, .csv or .parquet file")
    kind = file_type(path)
    try:
        if path.stat().st_size == 0:
            raise DatasetError(f"{path}: file is empty (expected {_EXPECTED[kind]})")
        reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind]
        count = 0
        for record in reader(path):
            count += 1
            yield record
    except PermissionError as e:
        raise DatasetError(f"{path}: cannot read file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path}: cannot read file: not UTF-8 text ({_first_bad_utf8(path, e)}); save it as UTF-8"
        ) from None
    if count == 0:
        raise DatasetError(f"{path}: file has no examples (expected {_EXPECTED[kind]})")


_EXPECTED = {
    "jsonl": "one JSON object per line",
    "json": "a JSON array of objects",
    "csv": "a header row and one example per row",
    "parquet": "one example per row",
}


def _read_jsonl(path: Path) -> Iterator[Record]:
    index = 0
    with path.open(encoding=ENCODING) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            loc = Location(str(path), line=lineno)
            try:
                data = json.loads(line)
            except (ValueError, RecursionError) as e:
                yield Record(index, loc, None, f"malformed JSON: {_json_problem(e)}", _salvage_id(line))
            else:
                if isinstance(data, dict):
                    yield Record(index, loc, data)
                else:
                    yield Record(index, loc, None, f"expected a JSON object, got {_json_type(data)}")
            index += 1


def _salvage_id(line: str) -> str | None:
    """The "id" of a line that is not valid JSON as a whole, when its id token itself is intact."""
    match = _ID_IN_TEXT.search(line)
    if not match:
        return None
    try:
        return str(json.loads(match.group(1)))
    except ValueError:  # malformed, or a number past Python's digit limit
        return None


def _json_problem(e: Exception) -> str:
    """What json.loads objected to, in words: its message and column, nesting too deep, or a number too
    long for Python (over sys.get_int_max_str_digits() digits)."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} (column {e.colno})"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if "digits" in str(e):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return str(e).splitlines()[0][:200]


def _first_bad_utf8(path: Path, error: UnicodeDecodeError) -> str:
    """Where a file first stops being UTF-8, as line and byte within it (the decoder's own offset counts
    from the start of the chunk it was decoding, not of the file)."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode(ENCODING if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                return (
                    f"{e.reason} at line {lineno}, byte {e.start + 1} of the line: {raw[e.start : e.end]!r}"
                )
    return error.reason


def _read_json(path: Path) -> Iterator[Record]:
    text = path.read_text(encoding=ENCODING)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several objects: JSON Lines saved as .json
            yield from _read_jsonl(path)
            return
        raise DatasetError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"{path}: malformed JSON: {_json_problem(e)}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of objects, got {_json_type(data)}")
    for i, item in enumerate(data):
        loc = Location(str(path), row=i)
        if isinstance(item, dict):
            yield Record(i, loc, item)
        else:
            yield Record(i, loc, None, f"expected a JSON object, got {_json_type(item)}")


def _read_csv(path: Path) -> Iterator[Record]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with path.open(encoding=ENCODING, newline="") as f:
        reader = csv.DictReader(f)
        try:
            yield from _csv_rows(path, reader)
        except csv.Error as e:  # an unclosed quote at the end, a NUL byte (Python < 3.11), ...
            raise DatasetError(
                f"{path}:{reader.line_num}: malformed CSV: {e}; check the quoting around line "
                f"{reader.line_num}"
            ) from None


def _csv_rows(path: Path, reader: csv.DictReader) -> Iterator[Record]:
    if not reader.fieldnames:
        raise DatasetError(f"{path}: no header row (expected column names such as instruction,output)")
    start = reader.line_num + 1
    for i, row in enumerate(reader):
        loc = Location(str(path), line=start)
        start = reader.line_num + 1
        if None in row:
            yield Record(
                i,
                loc,
                None,
                f"row has {len(reader.fieldnames) + len(row[None])} cells, "
                f"the header has {len(reader.fieldnames)}",
            )
            continue
        data: dict[str, Any] = dict(row)
        for col in JSON_COLUMNS:
            if isinstance(data.get(col), str):
                try:
                    data[col] = json.loads(data[col])
                except (ValueError, RecursionError) as e:
                    yield Record(i, loc, None, f"column '{col}': malformed JSON: {_json_problem(e)}")
                    break
        else:
            yield Record(i, loc, data)


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DatasetError(f"{path}: not a readable Parquet file: {e}") from None
    for i, row in enumerate(rows):
        yield Record(i, Location(str(path), row=i), row)


def _read_hub(name: str, split: str) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, unknown name, unknown split: all surface here
        raise DatasetError(
            f"hub dataset '{name}' (split '{split}') could not be loaded: {type(e).__name__}: {e}. "
            "Check the name and your network, or pass a local .jsonl/.json/.csv/.parquet file"
        ) from None
    for i, row in enumerate(ds):
        yield Record(i, Location(f"{name}[{split}]", row=i), dict(row))


def source_fingerprint(source: str) -> str:
    """sha256 of a local file's bytes (or of the hub name), to tie prepared data to its source."""
    path = Path(source).expanduser()
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(source.encode())
    return h.hexdigest()


def _json_type(value: Any) -> str:
    names = {
        list: "an array",
        dict: "an object",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)
