"""How many tokens a recipe trains on, for estimates before (or without) tokenizing. Imports no torch."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config import Recipe


def training_split_tokens(recipe: Recipe, tokens: int | None = None) -> tuple[int | None, str]:
    """(tokens, where the number comes from): `tokens` when given, else the run folder's data/stats.json
    (written by `tuneforge data prepare`), else characters / 4 of a local training file (rough); (None, "")
    for a hub dataset or a file not there yet. A local file that cannot be read raises its DatasetError."""
    if tokens is not None:
        return tokens, "given with --tokens"
    stats_file = Path(recipe.training.output_dir) / "data" / "stats.json"
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        share = stats["train_examples"] / max(stats["train_examples"] + stats["validation_examples"], 1)
        return int(stats["tokens"] * share), f"{stats_file}, training split"
    train_file = recipe.data.train_file
    if not train_file or not Path(train_file).is_file():
        return None, ""
    from tuneforge.data.readers import read_records

    records = read_records(train_file)
    chars = sum(len(json.dumps(r.data, ensure_ascii=False)) for r in records if r.data is not None)
    share = 1 - recipe.data.validation_fraction
    return int(chars / 4 * share), f"estimated as characters / 4 of {train_file}"
