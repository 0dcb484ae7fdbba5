"""One page for a whole `tuneforge run`: what was run, what came out, where the details are. Imports no torch.

Written to <run folder>/report.md from the stages' summaries (pipeline.json); each stage's own report
(eval/report.html, bench/report.html, cost/cost.html) holds the detail and is linked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.pipeline.stages import NAMES, Context


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def markdown(ctx: Context) -> str:
    from tuneforge.tables import duration

    r, recipe = ctx.results, ctx.recipe
    lines = [f"# {recipe.name}: {recipe.model.name_or_path}", ""]
    lines += [
        f"Data `{recipe.data.train_file}` (test `{recipe.data.test_file}`), LoRA r={recipe.lora.r} on "
        f"{', '.join(recipe.lora.target_modules)}, {recipe.training.max_steps} steps, "
        f"learning rate {recipe.training.learning_rate}.",
        "",
    ]
    if "data" in r:
        d = r["data"]["summary"]
        lines += ["## Data", ""]
        lines += _table(
            ["records", "valid", "train", "validation", "tokens"],
            [
                [
                    d.get("records"),
                    d.get("valid"),
                    d.get("train_examples"),
                    d.get("validation_examples"),
                    d.get("tokens"),
                ]
            ],
        )
        lines.append("")
    if "train" in r:
        t = r["train"]["summary"]
        lines += ["## Training", ""]
        lines += _table(
            ["steps", "train loss", "eval loss", "training time", "MLflow run"],
            [[t.get("global_step"), t.get("train_loss"), t.get("eval_loss"),
              duration(t["train_runtime"]) if t.get("train_runtime") else None, t.get("run_id")]],
        )  # fmt: skip
        lines.append("")
    if "compare" in r:
        c = r["compare"]["summary"]
        lines += ["## Base against fine-tuned", ""]
        names = list(c["finetuned"]["metrics"])
        rows = [
            [n, c["base"]["metrics"].get(n), c["finetuned"]["metrics"].get(n), c["delta"].get(n)]
            for n in names
        ]
        if c["base"].get("perplexity") is not None:
            rows.insert(0, ["perplexity", c["base"]["perplexity"], c["finetuned"]["perplexity"], None])
        lines += _table(["metric", "base", "fine-tuned", "difference"], rows)
        lines += ["", f"Every case, the most changed first: [{c['report']}]({c['report']})", ""]
    if "bench" in r:
        b = r["bench"]["summary"]
        lines += [
            "## Serving",
            "",
            f"Served on {b.get('device')}; details: [bench/report.html](bench/report.html)",
            "",
        ]
        lines += _table(
            ["load", "requests/s", "output tokens/s", "completed"],
            [[lv["load"], lv["requests_per_s"], lv["output_tok_s"], lv["completed"]] for lv in b["levels"]],
        )
        lines.append("")
    if "cost" in r:
        lines += [
            "## Cost",
            "",
            "Training and serving, measured and estimated: [cost/cost.html](cost/cost.html)",
            "",
        ]
    lines += ["## Time per stage", ""]
    lines += _table(
        ["stage", "time"], [[n, duration(r[n]["seconds"])] for n in NAMES if n in r and n != "report"]
    )
    return "\n".join(lines) + "\n"


def write_report(ctx: Context) -> Path:
    path = ctx.folder / "report.md"
    path.write_text(markdown(ctx))
    return path
