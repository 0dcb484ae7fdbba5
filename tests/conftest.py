"""Shared fixtures: a tiny random model with the embedded default's real tokenizer, and data writers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

# Tests never use the network: huggingface_hub and datasets read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: list[dict], kind: str | None = None) -> Path:
    """Write `rows` as JSONL, JSON, CSV or Parquet (chosen by `kind` or the suffix of `path`)."""
    kind = kind or path.suffix.lstrip(".")
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif kind == "csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(kind)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tuneforge.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def alpaca(n: int, prefix: str = "ex") -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)}
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def small_data_file(tmp_path_factory) -> Path:
    rows = [{"id": f"s{i}", "instruction": f"Add {i} and 1.", "output": str(i + 1)} for i in range(16)]
    return write_rows(tmp_path_factory.mktemp("small") / "small.jsonl", rows)


@pytest.fixture(scope="session")
def train_data(tokenizer, small_data_file):
    """Tokenized (train, validation) datasets of 16 tiny alpaca examples."""
    from tuneforge.config import DataConfig
    from tuneforge.data import DatasetPreprocessor

    prepared = DatasetPreprocessor(
        tokenizer, DataConfig(train_file=str(small_data_file), max_seq_length=64, validation_fraction=0.25)
    ).prepare()
    return prepared.train, prepared.validation


def quiet_training(out, **kw):
    """A short, quiet TrainingConfig for tests: no saving, no evaluation, log every step."""
    from tuneforge.config import TrainingConfig

    base = dict(
        output_dir=out,
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        learning_rate=1e-2,
        warmup_ratio=0.0,
        fp16=False,
    )
    return TrainingConfig(**{**base, **kw})
