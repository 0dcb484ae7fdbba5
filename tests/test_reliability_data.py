"""Corrupt dataset files (issue 14, item 5): whatever is wrong with a file, `tuneforge data validate`
accepts it (listing each bad example with file, line or row, and id) or refuses it with a DatasetError
that names the file; never a traceback.

    pytest -m reliability tests/test_reliability_data.py

The fuzzer starts from the real demo file (data/demo/train.jsonl), in every format the readers take
(JSONL, JSON, CSV, Parquet) and every dataset format (alpaca as shipped, chat, sharegpt,
prompt_completion), and corrupts it: wrong types, missing fields, huge fields, lone surrogates, then
bad UTF-8 bytes, BOMs, truncation, cut lines, stray lines of other formats, deep nesting, huge numbers,
NUL bytes, CSV quoting errors and empty files.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, write_rows
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tuneforge.cli import main
from tuneforge.config import DataConfig
from tuneforge.data import DatasetPreprocessor

pytestmark = pytest.mark.reliability

DEMO = [json.loads(line) for line in (REPO / "data/demo/train.jsonl").read_text().splitlines()[:12]]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A problem line of `data validate`: "<file>:<line>: example id '<id>': ..." or "<file>:row <n>: example #3"
PROBLEM = r"^{path}:(\d+|row \d+): example (id '.*'|#\d+): .+"

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
# Lines that do not belong: other formats, deep nesting, numbers past Python's int limit, odd JSON.
FOREIGN_LINES = [
    "instruction,input,output",
    '[{"instruction": "a", "output": "b"}]',
    "[" * 50_000,
    '"just a string"',
    "null",
    "\x00\x00\x00",
    "x" * 300_000,
]
ODD_OBJECTS = [
    '{"id": "x", "instruction": ' + "[" * 100_000 + "]" * 100_000 + ', "output": "b"}',
    '{"id": ' + "9" * 5000 + ', "instruction": "a", "output": "b"}',
    '{"id": "n", "instruction": NaN, "output": Infinity}',
    '{"id": "s", "instruction": "\\ud800", "output": "b"}',
    '{"id": "\\udfff", "instruction": "a", "output": "b"}',
    '{"id": "dup", "instruction": "a", "output": "b", "instruction": 1}',
]
STRAY_LINES = st.sampled_from(FOREIGN_LINES + ODD_OBJECTS)
BAD_BYTES = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80", b"\xf0\x28\x8c\x28"])
BOMS = st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])


def as_format(row: dict, kind: str) -> dict:
    """A demo row (alpaca) in another dataset format, same content."""
    user = f"{row['instruction']}\n\n{row['input']}"
    if kind == "chat":
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
        return {"id": row["id"], "messages": turns}
    if kind == "sharegpt":
        turns = [{"from": "human", "value": user}, {"from": "gpt", "value": row["output"]}]
        return {"id": row["id"], "conversations": turns}
    if kind == "prompt_completion":
        return {"id": row["id"], "prompt": user, "completion": row["output"]}
    return dict(row)


@st.composite
def row_damage(draw, rows: list[dict]) -> None:
    """Damage rows in place, before they are written: wrong types, missing or huge fields, odd ids."""
    row = rows[draw(st.integers(0, len(rows) - 1))]
    if not row:  # every field deleted by an earlier damage
        return
    key = draw(st.sampled_from(sorted(row)))
    what = draw(st.sampled_from(["type", "delete", "huge", "surrogate", "turn", "turn_field"]))
    turns = row.get("messages") or row.get("conversations")
    turns = turns if isinstance(turns, list) else None  # an earlier damage may have made it a string
    if what == "type":
        row[key] = draw(JSON_VALUES)
    elif what == "delete":
        del row[key]
    elif what == "huge":
        row[key] = "x" * draw(st.sampled_from([10_000, 200_000]))
    elif what == "surrogate":
        row[key] = "\ud800" if key == "id" else "text \udc80 more"
    elif turns and what == "turn":
        turns[draw(st.integers(0, len(turns) - 1))] = draw(JSON_VALUES)
    elif turns and what == "turn_field":
        turn = turns[draw(st.integers(0, len(turns) - 1))]
        if isinstance(turn, dict) and turn:
            turn[draw(st.sampled_from(sorted(turn)))] = draw(JSON_VALUES)


@st.composite
def byte_damage(draw, data: bytes) -> bytes:
    """Damage a written file: bad bytes, BOMs, truncation, cut or stray lines, quotes, NULs, emptiness."""
    what = draw(
        st.sampled_from(
            ["bad_bytes", "bom", "truncate", "cut_line", "stray_line", "quote", "nul", "empty", "blank"]
        )
    )
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if what == "bad_bytes":
        return data[:at] + draw(BAD_BYTES) + data[at:]
    if what == "bom":
        return draw(BOMS) + data
    if what == "truncate":
        return data[:at]
    if what == "empty":
        return b""
    if what == "blank":
        return b"\n \n\t\n"
    lines = data.split(b"\n")
    i = draw(st.integers(0, len(lines) - 1))
    if what == "cut_line":
        lines[i] = lines[i][: draw(st.integers(0, max(len(lines[i]) - 1, 0)))]
    elif what == "stray_line":
        lines.insert(i, draw(STRAY_LINES).encode("utf-8", "surrogatepass"))
    elif what == "quote":
        quotes = [m.start() for m in re.finditer(b'"', data)]
        if quotes:
            q = quotes[draw(st.integers(0, len(quotes) - 1))]
            return data[:q] + data[q + 1 :] if draw(st.booleans()) else data[:q] + b'"' + data[q:]
        return b'"' + data
    elif what == "nul":
        return data[:at] + b"\x00" + data[at:]
    return b"\n".join(lines)


def validate(path: Path) -> tuple[int, str, str]:
    """`tuneforge data validate PATH` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["data", "validate", str(path)])
    return status, out.getvalue(), err.getvalue()


def check_answer(path: Path, status: int, out: str, err: str) -> dict | None:
    """Accepted (0), accepted with invalid examples each named (1), or refused naming the file (2)."""
    assert "Traceback" not in err
    if status == 2:
        assert err.startswith(f"error: {path}"), err[:300]
        return None
    assert status in (0, 1), (status, err[:300])
    report = json.loads(out.strip().splitlines()[-1])
    assert report["valid"] + report["invalid"] == report["records"] > 0
    assert len(report["invalid_ids"]) == report["invalid"]
    assert (status == 1) == bool(report["problems"]) == (report["invalid"] > 0)
    pattern = re.compile(PROBLEM.format(path=re.escape(str(path))), re.S)
    for problem in report["problems"]:
        assert pattern.match(problem), problem[:300]
    return report


@SETTINGS
@given(data=st.data())
def test_a_corrupt_file_is_accepted_or_refused_with_file_line_and_id(data):
    kind = data.draw(st.sampled_from(["alpaca", "chat", "sharegpt", "prompt_completion"]), label="format")
    file_type = data.draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]), label="file type")
    rows = [as_format(r, kind) for r in DEMO[: data.draw(st.integers(1, len(DEMO)), label="rows")]]
    for _ in range(data.draw(st.integers(0, 2), label="row damages")):
        data.draw(row_damage(rows))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train.{file_type}"
        try:
            write_rows(path, rows)
        except Exception:  # a damage the writer itself refuses (Parquet's mixed column types, ...)
            path.write_bytes(json.dumps(rows, default=str).encode("utf-8", "surrogatepass"))
        raw = path.read_bytes()
        for _ in range(data.draw(st.integers(0, 2), label="byte damages")):
            raw = data.draw(byte_damage(raw))
        path.write_bytes(raw)
        status, out, err = validate(path)
        event(f"{file_type} exit {status}")  # pytest --hypothesis-show-statistics: how often each answer
        check_answer(path, status, out, err)


@SETTINGS
@given(data=st.data())
def test_a_bad_jsonl_line_is_named_by_line_and_id_and_the_others_are_kept(data):
    """One damaged line of a JSONL file: the problem names that line (and the id when it can be read);
    every other example is still valid; a file that is not UTF-8 is refused naming the line."""
    rows = [dict(r) for r in DEMO]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    k = data.draw(st.integers(0, len(lines) - 1), label="line")
    damage = data.draw(
        st.sampled_from(["cut", "type", "deep", "huge_int", "surrogate", "bad_bytes", "stray"]),
        label="damage",
    )
    keeps_id = damage in ("type", "huge_int", "surrogate", "deep")
    if damage == "cut":
        lines[k] = lines[k][: data.draw(st.integers(1, len(lines[k]) - 1))]
        keeps_id = lines[k].startswith(f'{{"id": "{rows[k]["id"]}"')
    elif damage == "type":
        field = data.draw(st.sampled_from(["instruction", "output"]))
        lines[k] = json.dumps(
            {**rows[k], field: data.draw(JSON_VALUES.filter(lambda v: not isinstance(v, str)))}
        )
    elif damage == "deep":
        lines[k] = lines[k][:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif damage == "huge_int":
        lines[k] = lines[k][:-1] + ', "n": ' + "7" * 5000 + "}"
    elif damage == "surrogate":
        lines[k] = json.dumps({**rows[k], "output": "bad \ud800 text"})
    elif damage == "stray":
        lines[k] = data.draw(st.sampled_from(FOREIGN_LINES))
    raw = [line.encode("utf-8", "surrogatepass") for line in lines]
    if damage == "bad_bytes":
        at = data.draw(st.integers(0, len(raw[k])))
        raw[k] = raw[k][:at] + data.draw(BAD_BYTES) + raw[k][at:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(b"\n".join(raw) + b"\n")
        status, out, err = validate(path)
        report = check_answer(path, status, out, err)
        if damage == "bad_bytes":
            assert status == 2 and f"line {k + 1}" in err, err
            return
        assert status == 1, (status, err)
        assert report["valid"] == len(rows) - 1 and len(report["problems"]) >= 1
        problem = report["problems"][0]
        assert problem.startswith(f"{path}:{k + 1}: "), problem[:200]
        if keeps_id:
            assert f"example id '{rows[k]['id']}'" in problem, problem[:200]


def test_a_real_validate_process_on_a_corrupt_file_prints_no_traceback(tmp_path):
    path = tmp_path / "train.csv"
    rows = [as_format(r, "chat") for r in DEMO[:4]]
    write_rows(path, rows)
    text = path.read_text(encoding="utf-8")
    path.write_bytes(b"\xef\xbb\xbf" + text.replace('"', "", 3).encode() + b'"' + b"x" * 200_000 + b"\n")
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "data", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (1, 2), (done.returncode, done.stdout, done.stderr)
    assert str(path) in (done.stdout + done.stderr)


@pytest.mark.parametrize("file_type", ["jsonl", "json", "csv"])
def test_a_utf8_byte_order_mark_is_not_a_problem(tmp_path, file_type):
    """Excel's "CSV UTF-8" and Notepad write one; the file is read as if it were not there."""
    path = write_rows(tmp_path / f"train.{file_type}", DEMO)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    status, out, err = validate(path)
    assert status == 0, out + err
    assert check_answer(path, status, out, err)["valid"] == len(DEMO)
    loaded = DatasetPreprocessor(config=DataConfig(train_file=str(path))).load_dataset()
    assert [e.id for e in loaded.examples] == [r["id"] for r in DEMO]  # the first column's name is intact


def test_a_csv_cell_longer_than_the_csv_module_allows_by_default_is_read(tmp_path):
    """Python's csv refuses cells over 131,072 characters unless told otherwise; a long document is data."""
    rows = [dict(DEMO[0], input="word " * 60_000), DEMO[1]]
    path = write_rows(tmp_path / "train.csv", rows)
    status, out, err = validate(path)
    assert status == 0, out + err
