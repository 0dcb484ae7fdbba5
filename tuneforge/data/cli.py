"""`tuneforge data`: validate, prepare and summarise datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneforge.command import add_target, json_line, recipe_for


def cmd_data_validate(args: argparse.Namespace) -> int:
    from tuneforge.config import DataConfig
    from tuneforge.data import DatasetPreprocessor

    status = 0
    for source in args.sources:
        pre = DatasetPreprocessor(config=DataConfig(train_file=source, format=args.format))
        loaded = pre.load_dataset()
        valid = len(loaded.examples)
        print(
            f"{source}: {loaded.format}, {loaded.num_records} records: {valid} valid, "
            f"{len(loaded.invalid_ids)} invalid"
        )
        for problem in loaded.problems:
            print(f"  {problem}")
        json_line(
            {
                "source": source,
                "format": loaded.format,
                "records": loaded.num_records,
                "valid": valid,
                "invalid": len(loaded.invalid_ids),
                "invalid_ids": loaded.invalid_ids,
                "problems": loaded.problems,
            }
        )
        status = status or (1 if loaded.problems else 0)
    return status


def _prepare(args: argparse.Namespace):
    from tuneforge.data import DatasetPreprocessor
    from tuneforge.models.loading import tokenizer_for

    recipe = recipe_for(args.target, args.overrides)
    tokenizer = tokenizer_for(recipe.model)
    return recipe, tokenizer, DatasetPreprocessor(tokenizer, recipe.data).prepare()


def _print_stats(stats: dict) -> None:
    t = stats["token_lengths"]
    share = stats["trainable_tokens"] / max(stats["tokens"], 1)
    rows = [
        ("source", f"{stats['source']} (sha256 {stats['sha256'][:12]})"),
        ("format", f"{stats['format']}, {stats['template']} template, loss on {stats['config']['train_on']}"),
        (
            "examples",
            f"{stats['records']} records, {stats['valid']} valid, {stats['invalid_skipped']} invalid skipped",
        ),
        (
            "split",
            f"{stats['train_examples']} train / {stats['validation_examples']} validation "
            f"(fraction {stats['config']['validation_fraction']}, seed {stats['config']['split_seed']})",
        ),
        (
            "truncated",
            f"{stats['truncated']} (max_seq_length {stats['max_seq_length']}); dropped "
            f"{stats['dropped_overlong']} overlong, {stats['dropped_no_response']} without "
            "response tokens",
        ),
        ("tokens", f"{stats['tokens']:,} total, {stats['trainable_tokens']:,} trainable ({share:.0%})"),
        ("length", "  ".join(f"{k} {t[k]}" for k in ("min", "p50", "p90", "p99", "max", "mean") if k in t)),
    ]
    for name, value in rows:
        print(f"{name:<10} {value}")
    if stats["invalid_ids"]:
        print(
            f"{'skipped':<10} {', '.join(stats['invalid_ids'][:20])}"
            + (" ..." if len(stats["invalid_ids"]) > 20 else "")
        )


def cmd_data_prepare(args: argparse.Namespace) -> int:
    recipe, _, prepared = _prepare(args)
    out = Path(args.output or Path(recipe.training.output_dir) / "data")
    prepared.save(out)
    _print_stats(prepared.stats)
    print(f"saved      {out}/train, {out}/validation, {out}/stats.json")
    json_line({"output": str(out), **{k: v for k, v in prepared.stats.items() if k != "config"}})
    return 0


def marked_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The decoded example with the tokens that carry loss between >>> and <<<."""
    from itertools import groupby

    from tuneforge.data.templates import IGNORE_INDEX

    parts = []
    pairs = zip(input_ids, labels, strict=True)
    for trained, group in groupby(pairs, key=lambda pair: pair[1] != IGNORE_INDEX):
        text = tokenizer.decode([tok for tok, _ in group])
        parts.append(f">>>{text}<<<" if trained else text)
    return "".join(parts)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from tuneforge.data.stats import histogram

    _, tokenizer, prepared = _prepare(args)
    stats = prepared.stats
    _print_stats(stats)
    lengths = list(prepared.train["length"]) + list(prepared.validation["length"])
    print("\ntokens per example:")
    print(histogram(lengths))
    if args.show:
        print("\nloss is computed on the text between >>> and <<<:")
        for row in prepared.train.select(range(min(args.show, len(prepared.train)))):
            print(f"--- {row['id']} ({row['length']} tokens)")
            print(marked_text(tokenizer, row["input_ids"], row["labels"]))
    json_line({k: v for k, v in stats.items() if k != "config"})
    return 0


def register(sub, fmt) -> None:
    data = sub.add_parser(
        "data",
        help="validate, prepare and summarise datasets",
        formatter_class=fmt,
        description="The dataset stage. Formats: alpaca (instruction, input, output), chat "
        "(messages),\nsharegpt (conversations), prompt_completion, text; files: "
        ".jsonl .json .csv .parquet, or a hub dataset name.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = dsub.add_parser(
        "validate",
        formatter_class=fmt,
        help="check every example; list every problem",
        description="Check the structure of every example without tokenizing. Each problem "
        "names the file,\nline (or row), example id and field. Exit status 1 if "
        "any example is invalid.",
        epilog="example:\n  tuneforge data validate data/demo/train.jsonl data/demo/test.jsonl",
    )
    p.add_argument("sources", nargs="+", metavar="FILE", help="data files or hub dataset names")
    p.add_argument(
        "--format", default="auto", help="alpaca, chat, sharegpt, prompt_completion, text (default: detect)"
    )
    p.set_defaults(func=cmd_data_validate)
    p = dsub.add_parser(
        "prepare",
        formatter_class=fmt,
        help="tokenize and split; save to the run folder",
        description="Validate, format (chat template or plain template), tokenize with "
        "response-only labels,\ntruncate or drop long examples, split train/"
        "validation deterministically, and save\n"
        "datasets to OUTPUT (default: <training.output_dir>/data) with stats.json.",
        epilog="example:\n  tuneforge data prepare configs/demo-cpu.yaml data.on_invalid=skip",
    )
    add_target(p)
    p.add_argument("--output", help="folder for the prepared splits")
    p.set_defaults(func=cmd_data_prepare)
    p = dsub.add_parser(
        "stats",
        formatter_class=fmt,
        help="counts and token-length distribution",
        description="Prepare in memory and print example counts, the split, truncation and "
        "a token-length\nhistogram, then one JSON line.",
        epilog="example:\n  tuneforge data stats configs/demo-cpu.yaml --show 2",
    )
    add_target(p)
    p.add_argument(
        "--show",
        type=int,
        default=0,
        metavar="N",
        help="also print N prepared examples, marking the tokens that carry loss",
    )
    p.set_defaults(func=cmd_data_stats)
