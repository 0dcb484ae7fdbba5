"""The run report's sections, built from what the run recorded (pipeline/record.py). Imports no torch.

    sections = build_sections(read_run("runs/demo-cpu"))

One function per section, in the report's order: the recipe, the data, training, base against
fine-tuned, serving, resource use, cost, and the time each stage took. A section whose stage did not run
says so in one line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tuneforge.pipeline import plots
from tuneforge.pipeline.page import Figure, Folded, Links, Section, Table, Text, not_run, number
from tuneforge.pipeline.record import RunRecord
from tuneforge.pipeline.sections_serving import cost_section, resources_section, serving_section
from tuneforge.pipeline.stages import NAMES
from tuneforge.tables import duration

CHANGED_SHOWN = 5  # most improved and most worsened cases shown
HISTORY_ROWS = 12  # logged training values shown in a table (evenly spaced, the last always)


def _or_default(value: Any) -> str:
    return "default" if value is None else str(value)


def recipe_section(rec: RunRecord) -> Section:
    section = Section("recipe", "Recipe")
    r = rec.recipe
    if not r:
        section.not_run = "no recipe was saved in the run folder (recipe.yaml)."
        return section
    m, d, lora, t = r.get("model", {}), r.get("data", {}), r.get("lora", {}), r.get("training", {})
    ev, s, inf = r.get("eval", {}), r.get("sampling", {}), r.get("inference", {})
    adapter = (
        f"LoRA r={lora.get('r')}, alpha={lora.get('lora_alpha')}, dropout={lora.get('lora_dropout')} on "
        + ", ".join(lora.get("target_modules") or [])
    )
    if t.get("use_quantization"):
        adapter += f"; 4-bit base weights (QLoRA, {r.get('quantization', {}).get('quant_type')})"
    length = (
        f"{t.get('max_steps')} steps"
        if (t.get("max_steps") or 0) > 0
        else f"{t.get('num_train_epochs')} epochs"
    )
    evaluation = (
        f"{', '.join(ev.get('metrics') or [])} on {ev.get('limit') or 'all'} test cases; temperature "
        f"{_or_default(s.get('temperature'))}, up to {s.get('max_tokens')} new tokens"
    )
    precision = "bf16" if t.get("bf16") else "fp16" if t.get("fp16") else str(m.get("dtype") or "float32")
    rows = [
        ["model", f"{m.get('name_or_path')} ({m.get('dtype')})"],
        ["training data", f"{d.get('train_file')} ({d.get('format')}), "
                          f"{d.get('validation_fraction')} held out for validation"],
        ["test data", str(d.get("test_file") or "none: the training file")],
        ["max sequence length", str(d.get("max_seq_length"))],
        ["adapter", adapter],
        ["training length", f"{length}, {t.get('per_device_train_batch_size')} examples per device x "
                            f"{t.get('gradient_accumulation_steps')} accumulation"],
        ["learning rate", f"{t.get('learning_rate')}, {t.get('lr_scheduler_type')} schedule, warm-up "
                          f"{t.get('warmup_ratio')} of the steps"],
        ["precision, seed", f"{precision}, seed {t.get('seed')}"],
        ["evaluation", evaluation],
        ["serving engine", _or_default(inf.get("engine"))],
    ]  # fmt: skip
    section.blocks = [
        Table(["setting", "value"], rows),
        Folded("The full recipe (YAML)", rec.recipe_yaml or "", "yaml"),
    ]
    return section


def data_section(rec: RunRecord) -> Section:
    if "data" not in rec.stages:
        return not_run("data", "Data", "data")
    st = rec.data_stats or rec.stages["data"]["summary"]
    lengths = st.get("token_lengths") or {}
    template = f", {st['template']} template" if st.get("template") else ""
    rows = [
        ["source", f"{st.get('source')} ({st.get('format')}{template})"],
        ["records read", number(st.get("records"))],
        ["valid", number(st.get("valid"))],
        ["invalid, skipped", number(st.get("invalid_skipped"))],
        ["training examples", number(st.get("train_examples"))],
        ["validation examples", number(st.get("validation_examples"))],
        ["tokens", number(st.get("tokens"))],
        ["tokens that carry the loss", number(st.get("trainable_tokens"))],
        ["tokens per example: min / mean / p50 / p90 / p99 / max",
         " / ".join(number(lengths.get(k)) for k in ("min", "mean", "p50", "p90", "p99", "max"))],
        ["truncated / dropped as too long / dropped without a response",
         " / ".join(number(st.get(k)) for k in ("truncated", "dropped_overlong", "dropped_no_response"))],
    ]  # fmt: skip
    return Section(
        "data",
        "Data",
        [Table(["statistic", "value"], rows), Links("Details", [("data/stats.json", "data/stats.json")])],
    )


def _history_rows(history: list[dict[str, Any]]) -> list[list[str]]:
    """(step, training loss, validation loss, learning rate, grad norm), at most HISTORY_ROWS of them."""
    by_step: dict[int, dict[str, Any]] = {}
    for h in history:
        if any(k in h for k in ("loss", "eval_loss", "learning_rate")):
            by_step.setdefault(h["step"], {}).update(h)
    steps = sorted(by_step)
    if len(steps) > HISTORY_ROWS:
        every = -(-len(steps) // HISTORY_ROWS)
        steps = sorted({*steps[::every], steps[-1]})
    keys = ("loss", "eval_loss", "learning_rate", "grad_norm")
    return [[str(s), *(number(by_step[s].get(k)) for k in keys)] for s in steps]


def training_section(rec: RunRecord) -> Section:
    section = Section("training", "Training: loss and learning rate")
    if "train" not in rec.stages:
        return not_run(section.key, section.title, "train")
    t = rec.stages["train"]["summary"]
    losses = [h["loss"] for h in rec.history if "loss" in h]
    stopped = f" (stopped early: {t['stopped_early']})" if t.get("stopped_early") else ""
    first_last = f"{number(losses[0])} -> {number(losses[-1])}" if losses else "n/a"
    rows = [
        ["steps", f"{t.get('global_step')}{stopped}"],
        ["training loss, first and last logged", first_last],
        ["training loss, mean over the run", number(t.get("train_loss"))],
        ["validation loss at the end", number(t.get("eval_loss"))],
        ["training time", duration(t["train_runtime"]) if t.get("train_runtime") else "n/a"],
        ["examples per second", number(t.get("train_samples_per_second"))],
        ["tokens seen", number(t.get("num_input_tokens_seen"))],
        ["MLflow run", str(t.get("run_id") or "not tracked")],
    ]  # fmt: skip
    section.blocks = [Table(["measurement", "value"], rows)]
    svg = plots.training_curves(rec.history)
    if svg is None:
        section.blocks.append(Text("No per-step history in the run folder (train_history.jsonl): no curves."))
        return section
    section.blocks += [
        Figure(svg, f"Each logged step, from {rec.history_source}."),
        Table(
            ["step", "training loss", "validation loss", "learning rate", "grad norm"],
            _history_rows(rec.history),
        ),
    ]
    return section


def ranked_cases(results: dict[str, Any], metric: str) -> list[tuple[float, dict, dict]]:
    """(change in `metric`, base case, fine-tuned case), most improved first; ties broken by the change
    summed over every metric, then by test order."""
    names = list(results["base"]["metrics"])

    def change(b: dict, t: dict, name: str) -> float:
        return (t["scores"].get(name) or 0.0) - (b["scores"].get(name) or 0.0)

    pairs = zip(results["base"]["cases"], results["finetuned"]["cases"], strict=True)
    scored = [
        (change(b, t, metric), sum(change(b, t, n) for n in names), i, b, t) for i, (b, t) in enumerate(pairs)
    ]
    scored.sort(key=lambda x: (-x[0], -x[1], x[2]))
    return [(d, b, t) for d, _, _, b, t in scored]


def _case_rows(ranked: list[tuple[float, dict, dict]]) -> list[list[str]]:
    def text(value: Any) -> str:
        return "(no output)" if value is None else str(value)

    return [
        [b["id"], f"{d:+.2f}", text(b["reference"]), text(b["prediction"]), text(t["prediction"])]
        for d, b, t in ranked
    ]


def compare_section(rec: RunRecord) -> Section:
    section = Section("compare", "Base against fine-tuned")
    c = rec.compare
    if c is None:
        return not_run(section.key, section.title, "compare")
    base, tuned = c["base"], c["finetuned"]
    sampling = ", ".join(f"{k} {v}" for k, v in (c.get("sampling") or {}).items() if v not in (None, []))
    rows = []
    if base.get("perplexity") is not None and tuned.get("perplexity") is not None:
        rows.append(
            [
                "perplexity",
                number(base["perplexity"]),
                number(tuned["perplexity"]),
                number(tuned["perplexity"] - base["perplexity"]),
            ]
        )
    names = list(base["metrics"])
    rows += [
        [
            n,
            number(base["metrics"][n]["mean"]),
            number(tuned["metrics"][n]["mean"]),
            number(c["delta"].get(n)),
        ]
        for n in names
    ]
    section.blocks = [
        Text(f"{base['model']} against {tuned['model']} on the same {base['num_examples']} test cases "
             f"({c.get('data', 'test data')}), same generation settings ({sampling or 'defaults'})."),
        Table(["metric", "base", "fine-tuned", "difference"], rows),
    ]  # fmt: skip
    svg = plots.metric_bars(
        names, [base["metrics"][n]["mean"] for n in names], [tuned["metrics"][n]["mean"] for n in names]
    )
    if svg:
        section.blocks.append(Figure(svg, "Mean score of each metric over the test cases."))
    if names and base["cases"]:
        metric = names[0]
        ranked = ranked_cases(c, metric)
        up = [x for x in ranked if x[0] > 0]
        down = [x for x in reversed(ranked) if x[0] < 0]
        header = ["case", f"change in {metric}", "reference", "base output", "fine-tuned output"]
        section.blocks.append(
            Text(f"On {metric}: {len(up)} of {len(ranked)} cases improved, {len(down)} got worse, "
                 f"{len(ranked) - len(up) - len(down)} unchanged.")
        )  # fmt: skip
        if up:
            section.blocks += [
                Text("Most improved cases:"),
                Table(header, _case_rows(up[:CHANGED_SHOWN]), (2, 3, 4)),
            ]
        if down:
            section.blocks += [
                Text("Most worsened cases:"),
                Table(header, _case_rows(down[:CHANGED_SHOWN]), (2, 3, 4)),
            ]
    if "report" in rec.stages["compare"]["summary"]:
        report = rec.stages["compare"]["summary"]["report"]
        section.blocks.append(Links("Every case, scored", [(report, report)]))
    return section


def times_section(rec: RunRecord) -> Section:
    rows, total = [], 0.0
    for name in (n for n in NAMES if n != "report"):  # the report is this page
        stage = rec.stages.get(name)
        if stage is None:
            rows.append([name, "not run", ""])
            continue
        total += stage["seconds"]
        finished = stage.get("finished_at")
        when = datetime.fromtimestamp(finished, UTC).strftime("%Y-%m-%d %H:%M UTC") if finished else ""
        rows.append([name, duration(stage["seconds"]), when])
    rows.append(["all stages", duration(total), ""])
    return Section("times", "Time per stage", [Table(["stage", "time", "finished"], rows)])


def build_sections(rec: RunRecord) -> list[Section]:
    return [
        recipe_section(rec),
        data_section(rec),
        training_section(rec),
        compare_section(rec),
        serving_section(rec),
        resources_section(rec),
        cost_section(rec),
        times_section(rec),
    ]
