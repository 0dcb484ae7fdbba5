"""The shipped demo dataset: reproducible from its script, valid, and with a truly held-out test split."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

DEMO = REPO / "data" / "demo"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generator_reproduces_the_shipped_files(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_demo_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_test_split_is_held_out_and_checkable():
    train, test = rows(DEMO / "train.jsonl"), rows(DEMO / "test.jsonl")
    assert (len(train), len(test)) == (800, 200)
    train_values = {(json.loads(r["output"])["name"], json.loads(r["output"])["city"]) for r in train}
    train_names = {n for n, _ in train_values}
    train_cities = {c for _, c in train_values}
    for r in test:
        ref = json.loads(r["output"])
        assert list(ref) == ["name", "city", "item", "color", "quantity"]
        assert isinstance(ref["quantity"], int)
        assert ref["name"] not in train_names and ref["city"] not in train_cities
        assert ref["name"] in r["input"] and ref["city"] in r["input"]
    assert not {r["input"] for r in train} & {r["input"] for r in test}
