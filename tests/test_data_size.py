"""How many tokens a recipe trains on, before tokenizing (tuneforge.data.size)."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.size import training_split_tokens
from tuneforge.errors import DatasetError
from tuneforge.recipes import load_recipe


def recipe(tmp_path, train_file, fraction=0.25):
    return load_recipe(
        None,
        [f"data.train_file={train_file}", f"training.output_dir={tmp_path / 'run'}",
         f"data.validation_fraction={fraction}"],
    )  # fmt: skip


def test_given_tokens_win(tmp_path):
    assert training_split_tokens(recipe(tmp_path, "x.jsonl"), 123) == (123, "given with --tokens")


def test_prepared_stats_give_the_training_splits_share(tmp_path):
    r = recipe(tmp_path, "x.jsonl")
    (tmp_path / "run" / "data").mkdir(parents=True)
    (tmp_path / "run" / "data" / "stats.json").write_text(
        json.dumps({"tokens": 1000, "train_examples": 30, "validation_examples": 10})
    )
    tokens, source = training_split_tokens(r)
    assert tokens == 750 and "stats.json" in source


def test_a_raw_file_is_estimated_at_four_characters_a_token(tmp_path):
    rows = [{"instruction": "a" * 37, "output": "b" * 11}, {"instruction": "c", "output": "d" * 100}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chars = sum(len(json.dumps(r)) for r in rows)
    tokens, source = training_split_tokens(recipe(tmp_path, path, 0.25))
    assert tokens == int(chars / 4 * 0.75) and str(path) in source


def test_no_file_yet_or_a_hub_dataset_gives_no_count(tmp_path):
    assert training_split_tokens(recipe(tmp_path, tmp_path / "missing.jsonl")) == (None, "")
    assert training_split_tokens(recipe(tmp_path, "org/dataset")) == (None, "")


def test_a_local_file_that_cannot_be_read_is_an_error_naming_it_and_bad_lines_count_nothing(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("")
    with pytest.raises(DatasetError, match=r"train\.jsonl: file is empty"):
        training_split_tokens(recipe(tmp_path, path))
    good = '{"instruction": "a", "output": "b"}'
    path.write_text(good + "\n{not json at all, and long " + "x" * 400 + "\n")
    assert training_split_tokens(recipe(tmp_path, path, 0.0))[0] == int(len(good) / 4)
