"""DatasetPreprocessor: load, validate, format, tokenize and split an instruction dataset.

tuneforge data prepare configs/demo-cpu.yaml

from tuneforge.data import DatasetPreprocessor
pre = DatasetPreprocessor(tokenizer, DataConfig(train_file="my.jsonl"))
prepared = pre.prepare()                   # train/validation datasets.Dataset + statistics
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tuneforge.config import DataConfig
from tuneforge.data import formats
from tuneforge.data.formats import Example
from tuneforge.data.readers import Location, read_records, source_fingerprint
from tuneforge.data.split import assign_validation
from tuneforge.data.stats import length_summary
from tuneforge.data.templates import IGNORE_INDEX, TemplateError, encode_batch, render_example
from tuneforge.errors import DatasetError

log = logging.getLogger(__name__)
DETECT_SAMPLE = 1000  # records read to detect the format
MAX_LISTED = 50  # problems shown in an exception message; all are kept on the exception


def describe(location: Location, eid: str) -> str:
    label = f"example {eid}" if eid.startswith("#") else f"example id '{eid}'"
    return f"{location}: {label}"


@dataclass
class LoadedDataset:
    """Valid examples of one source, with the problems found in the others."""

    source: str
    format: str
    examples: list[Example]
    locations: list[Location]
    problems: list[str]
    invalid_ids: list[str]
    num_records: int
    fingerprint: str


@dataclass
class PreparedData:
    """Tokenized train and validation splits and the statistics of how they were made."""

    train: Any  # datasets.Dataset with columns id, input_ids, labels, length
    validation: Any
    stats: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.train.save_to_disk(str(folder / "train"))
        self.validation.save_to_disk(str(folder / "validation"))
        (folder / "stats.json").write_text(json.dumps(self.stats, indent=2) + "\n")
        return folder


def raise_problems(source: str, problems: list[str], headline: str) -> None:
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DatasetError(
        f"{source}: {headline}:\n  {shown}{more}\n"
        "Fix them, or set data.on_invalid=skip to drop these examples (they are listed in the report).",
        problems,
    )


class DatasetPreprocessor:
    """The dataset stage: load, check, format, tokenize, split and save instruction data."""

    def __init__(self, tokenizer=None, config: DataConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config or DataConfig()

    # ------------------------------------------------------------------ loading and validation

    def load_dataset(self, file_path: str | None = None, format: str | None = None) -> LoadedDataset:
        """Read every record of a file (or hub dataset), detect its format and check every example.

        Raises DatasetError for an unreadable/empty file or an unknown format; problems with single
        examples are collected in `problems` (see `check`).
        """
        source = file_path or self.config.train_file
        fmt = format or self.config.format
        records = list(read_records(source, self.config.hub_split))
        if fmt == "auto":
            fmt = formats.detect_format([r.data for r in records[:DETECT_SAMPLE] if r.data is not None])
            if fmt is None:
                first = next((r.data for r in records if r.data is not None), None)
                seen = f"its fields are {sorted(first)}" if first else "no record could be parsed"
                raise DatasetError(
                    f"{source}: cannot tell the dataset format: {seen}. Expected one of: "
                    f"{formats.describe_formats()}. Rename the fields, or name the format with "
                    "data.format=... (or --format)"
                )
        examples, locations, problems, invalid = [], [], [], []
        seen_ids: dict[str, Location] = {}
        for rec in records:
            eid = formats.example_id(rec.data if rec.data is not None else {"id": rec.id_hint}, rec.index)
            where = describe(rec.location, eid)
            if rec.data is None:
                found = [f"{where}: {rec.error}"]
            else:
                found = [f"{where}: {p}" for p in formats.check_example(rec.data, fmt)]
                if not eid.startswith("#") and eid in seen_ids:
                    found.append(f"{where}: field 'id': duplicate of {seen_ids[eid]}")
            if found:
                problems.extend(found)
                invalid.append(eid)
                continue
            seen_ids.setdefault(eid, rec.location)
            examples.append(formats.to_example(rec.data, fmt, rec.index))
            locations.append(rec.location)
        return LoadedDataset(
            source, fmt, examples, locations, problems, invalid, len(records), source_fingerprint(source)
        )

    def check(self, loaded: LoadedDataset) -> None:
        """Apply data.on_invalid: raise with every problem (error), or log what is skipped (skip)."""
        if not loaded.problems:
            return
        if self.config.on_invalid == "error":
            raise_problems(
                loaded.source,
                loaded.problems,
                f"{len(loaded.problems)} problems in {len(loaded.invalid_ids)} invalid examples",
            )
        log.warning(
            "skipping %d invalid examples of %s (data.on_invalid=skip): %s",
            len(loaded.invalid_ids),
            loaded.source,
            ", ".join(loaded.invalid_ids[:20]),
        )

    def validate_example(self, example: dict, format: str | None = None) -> bool:
        """True if and only if `example` has every required field of the format, well-typed."""
        fmt = format or self.config.format
        if fmt == "auto":
            fmt = formats.signature(example) if isinstance(example, dict) else None
            if fmt is None:
                return False
        return formats.validate_example(example, fmt)

    # ------------------------------------------------------------------ formatting

    def format_instruction(self, example: dict | Example, format: str | None = None) -> dict[str, Any]:
        """Training text of one example, with input_ids and labels when a tokenizer is set.

        Without a tokenizer the plain template is used.
        """
        if isinstance(example, dict):
            fmt = format or self.config.format
            if fmt == "auto":
                fmt = formats.signature(example)
            problems = formats.check_example(example, fmt) if fmt else ["unknown format"]
            if problems:
                raise DatasetError(
                    f"example {formats.example_id(example, 0)}: " + "; ".join(map(str, problems))
                )
            example = formats.to_example(example, fmt, 0)
        rendered = render_example(
            example, self.tokenizer, "auto" if self.tokenizer is not None else "plain", self.config.train_on
        )
        out: dict[str, Any] = {"id": example.id, "text": rendered.text, "spans": rendered.spans}
        if self.tokenizer is not None:
            enc = encode_batch([rendered], self.tokenizer)[0]
            out.update(input_ids=enc.input_ids, labels=enc.labels)
        return out

    # ------------------------------------------------------------------ preparation

    def prepare_dataset(self, dataset: LoadedDataset) -> tuple[Any, Any]:
        """Tokenize and split a loaded dataset into (train, validation) `datasets.Dataset`s."""
        prepared = self._prepare(dataset)
        return prepared.train, prepared.validation

    def prepare(self, file_path: str | None = None) -> PreparedData:
        """load_dataset + check + tokenize + split, with statistics."""
        loaded = self.load_dataset(file_path)
        self.check(loaded)
        return self._prepare(loaded)

    def _prepare(self, loaded: LoadedDataset, chunk: int = 256) -> PreparedData:
        import datasets

        if self.tokenizer is None:
            raise ValueError("DatasetPreprocessor needs a tokenizer to prepare data")
        cfg = self.config
        is_val = assign_validation(
            [e.content() for e in loaded.examples], cfg.validation_fraction, cfg.split_seed
        )
        rows = {"train": _columns(), "validation": _columns()}
        counts = {"truncated": 0, "dropped_overlong": 0, "dropped_no_response": 0}
        template_problems: list[str] = []
        uses_chat_template = None
        bar = tqdm(
            total=len(loaded.examples), desc="tokenizing", unit="ex", disable=len(loaded.examples) < 500
        )
        for start in range(0, len(loaded.examples), chunk):
            batch = range(start, min(start + chunk, len(loaded.examples)))
            rendered, kept = [], []
            for i in batch:
                try:
                    rendered.append(
                        render_example(loaded.examples[i], self.tokenizer, cfg.chat_template, cfg.train_on)
                    )
                    kept.append(i)
                except TemplateError as e:
                    template_problems.append(f"{describe(loaded.locations[i], loaded.examples[i].id)}: {e}")
            if rendered and uses_chat_template is None:
                uses_chat_template = rendered[0].uses_chat_template
            for i, enc in zip(kept, encode_batch(rendered, self.tokenizer), strict=True):
                ids, labels = enc.input_ids, enc.labels
                if len(ids) > cfg.max_seq_length:
                    if cfg.overlong == "drop":
                        counts["dropped_overlong"] += 1
                        continue
                    ids, labels = ids[: cfg.max_seq_length], labels[: cfg.max_seq_length]
                    counts["truncated"] += 1
                if all(lab == IGNORE_INDEX for lab in labels):
                    counts["dropped_no_response"] += 1
                    continue
                split = rows["validation" if is_val[i] else "train"]
                split["id"].append(loaded.examples[i].id)
                split["input_ids"].append(ids)
                split["labels"].append(labels)
                split["length"].append(len(ids))
            bar.update(len(batch))
        bar.close()
        if template_problems:
            if cfg.on_invalid == "error":
                raise_problems(
                    loaded.source,
                    template_problems,
                    f"{len(template_problems)} examples the chat template cannot render",
                )
            log.warning("skipping %d examples the chat template cannot render", len(template_problems))
        train = datasets.Dataset.from_dict(rows["train"])
        validation = datasets.Dataset.from_dict(rows["validation"])
        if len(train) == 0:
            raise DatasetError(
                f"{loaded.source}: no training examples left after preparation "
                f"({counts}); check data.max_seq_length and data.overlong"
            )
        stats = build_stats(loaded, rows, counts, len(template_problems), cfg, uses_chat_template)
        return PreparedData(train, validation, stats)


def _columns() -> dict[str, list]:
    return {"id": [], "input_ids": [], "labels": [], "length": []}


def build_stats(
    loaded: LoadedDataset,
    rows: dict,
    counts: dict,
    template_failures: int,
    cfg: DataConfig,
    uses_chat_template: bool | None,
) -> dict[str, Any]:
    lengths = rows["train"]["length"] + rows["validation"]["length"]
    trainable = sum(
        sum(lab != IGNORE_INDEX for lab in labels) for split in rows.values() for labels in split["labels"]
    )
    return {
        "source": loaded.source,
        "sha256": loaded.fingerprint,
        "format": loaded.format,
        "template": "chat" if uses_chat_template else "plain",
        "records": loaded.num_records,
        "valid": len(loaded.examples),
        "invalid_skipped": len(loaded.invalid_ids),
        "invalid_ids": loaded.invalid_ids,
        "template_failures_skipped": template_failures,
        "train_examples": len(rows["train"]["id"]),
        "validation_examples": len(rows["validation"]["id"]),
        **counts,
        "max_seq_length": cfg.max_seq_length,
        "tokens": sum(lengths),
        "trainable_tokens": trainable,
        "token_lengths": length_summary(lengths),
        "config": asdict(cfg),
    }
