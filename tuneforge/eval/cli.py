"""`tuneforge eval` (one model) and `tuneforge compare` (base versus fine-tuned), with reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneforge.command import add_target, json_line, recipe_for
from tuneforge.config import Recipe


def _eval_output(recipe: Recipe, results: dict, title: str, adapter: str | None) -> Path:
    from tuneforge.eval.report import metric_rows
    from tuneforge.eval.workflow import save_results
    from tuneforge.tables import print_table

    out, run_id = save_results(recipe, results, title, adapter)
    comparing = "finetuned" in results
    columns = ("base", "fine-tuned", "difference") if comparing else ("value",)
    rows = [(name, *values[: len(columns)]) for name, *values in metric_rows(results)]
    print_table([dict(zip(("metric", *columns), row, strict=True)) for row in rows])
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
    json_line({"report": str(out / "report.html"), "mlflow_run_id": run_id, **summary})
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from tuneforge.eval.workflow import run_eval

    recipe = recipe_for(args.target, args.overrides)
    results = run_eval(recipe, args.adapter, args.data)
    _eval_output(recipe, results, f"Evaluation of {results['model']}", args.adapter)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tuneforge.eval.workflow import run_compare

    if not args.adapter and not args.other:
        print("error: compare needs --adapter PATH (base vs base+adapter) or --other MODEL", file=sys.stderr)
        return 2
    recipe = recipe_for(args.target, args.overrides)
    results = run_compare(recipe, args.adapter, args.other, args.data)
    _eval_output(recipe, results, "Base versus fine-tuned", args.adapter)
    return 0


def register(sub, fmt) -> None:
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
        add_target(p)
        p.add_argument("--adapter", help="adapter folder to apply to the recipe's model")
        p.add_argument("--data", help="test data file (default: data.test_file)")
        if name == "compare":
            p.add_argument("--other", help="compare against this model reference instead of base + adapter")
        p.set_defaults(func=func)
