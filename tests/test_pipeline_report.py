"""The run report (report.html and report.md) of a recorded `tuneforge run` on a tiny model: every section
is there with the figures of the files the stages wrote, and a stage that did not run is one line."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from test_pipeline import tiny_recipe

from tuneforge.cost.catalog import load_catalog
from tuneforge.cost.report import usd
from tuneforge.pipeline.page import number
from tuneforge.pipeline.run import run_pipeline
from tuneforge.pipeline.sections import ranked_cases
from tuneforge.pipeline.stages import Options
from tuneforge.tables import duration

SECTIONS = ["recipe", "data", "training", "compare", "serving", "resources", "cost", "times"]
OPTIONS = Options(concurrency=[1, 2], requests=4, output_len=4)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_model_dir, small_data_file):
    """A real run on the tiny model: `--stages data,train,report` first (its report kept), then every
    stage (data and train skipped). Returns (run folder, first report pages, second run's statuses)."""
    tmp = tmp_path_factory.mktemp("recorded")
    model = shutil.copytree(tiny_model_dir, tmp / "tiny-3m")  # cost gpus reads the model's size from its name
    recipe = tiny_recipe(
        model, small_data_file, tmp,
        "training.max_steps=4", "training.logging_steps=1", "training.eval_strategy=steps",
        "training.eval_steps=2", "eval.metrics=[token_f1,exact_match]",
    )  # fmt: skip
    run = tmp / "run"
    run_pipeline(recipe, OPTIONS, ["data", "train", "report"])
    partial = {name: (run / name).read_text() for name in ("report.html", "report.md")}
    statuses = {name: d["status"] for name, d in run_pipeline(recipe, OPTIONS).items()}
    return run, partial, statuses


def html_sections(page: str) -> dict[str, str]:
    """Each section's HTML by its id; cells of long text lose their class (they may wrap, others not)."""
    return dict(
        re.findall(r'<section id="(\w+)">(.*?)</section>', page.replace("<td class=long>", "<td>"), re.S)
    )


def md_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def cells(*values) -> str:
    """Consecutive table cells, as the page writes them (short values never wrap)."""
    return "".join(f"<td>{html.escape(str(v))}</td>" for v in values)


def md_row(*values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def page(run) -> tuple[dict[str, str], dict[str, str]]:
    return html_sections((run / "report.html").read_text()), md_sections((run / "report.md").read_text())


def read(run, name):
    return json.loads((run / name).read_text())


# --------------------------------------------------------------------------- the whole run


def test_every_section_in_order_in_both_files_and_rewritten_when_more_stages_ran(recorded):
    run, _, statuses = recorded
    assert statuses == {"data": "skipped", "train": "skipped", "compare": "ran", "bench": "ran",
                        "cost": "ran", "report": "ran"}  # fmt: skip
    text = (run / "report.html").read_text()
    assert re.findall(r'<section id="(\w+)">', text) == SECTIONS
    titles = re.findall(r"<h2>(.*?)</h2>", text)
    assert list(md_sections((run / "report.md").read_text())) == [html.unescape(t) for t in titles]
    assert "Not run" not in text and "Not run" not in (run / "report.md").read_text()
    # self-contained: nothing fetched (the only links are to files and the price sources)
    assert not re.search(r"<script|<link|<img|src=|@import|url\((?!#)", text)  # url(#id): in the page
    assert text.count("<svg") == 3  # training curves, metric bars, serving sweep


def test_recipe_and_data_sections_show_the_recorded_settings_and_statistics(recorded):
    run, _, _ = recorded
    sections, md = page(run)
    recipe = sections["recipe"]
    t = yaml.safe_load((run / "run-recipe.yaml").read_text())["training"]
    length = f"{t['max_steps']} steps, {t['per_device_train_batch_size']} examples per device x "
    assert cells("training length", f"{length}{t['gradient_accumulation_steps']} accumulation") in recipe
    assert cells("learning rate", f"{t['learning_rate']}, {t['lr_scheduler_type']} schedule, warm-up "
                                  f"{t['warmup_ratio']} of the steps") in recipe  # fmt: skip
    assert html.escape((run / "run-recipe.yaml").read_text()) in recipe  # the full YAML, folded
    stats = read(run, "data/stats.json")
    for label, key in [("records read", "records"), ("training examples", "train_examples"),
                       ("validation examples", "validation_examples"), ("tokens", "tokens"),
                       ("tokens that carry the loss", "trainable_tokens")]:  # fmt: skip
        assert cells(label, number(stats[key])) in sections["data"], label
        assert md_row(label, number(stats[key])) in md["Data"], label
    lengths = stats["token_lengths"]
    assert (
        " / ".join(number(lengths[k]) for k in ("min", "mean", "p50", "p90", "p99", "max"))
        in sections["data"]
    )


def test_loss_and_learning_rate_come_from_the_history_the_trainer_wrote(recorded):
    run, _, _ = recorded
    sections, md = page(run)
    history = [json.loads(line) for line in (run / "train_history.jsonl").read_text().splitlines()]
    losses = {h["step"]: h for h in history if "loss" in h}
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    assert sorted(losses) == [1, 2, 3, 4] and sorted(evals) == [2, 4]
    training = sections["training"]
    assert "<svg" in training and "from train_history.jsonl" in training
    for step, h in losses.items():
        row = [
            step,
            number(h["loss"]),
            number(evals.get(step)),
            number(h["learning_rate"]),
            number(h["grad_norm"]),
        ]
        assert cells(*row) in training, step
        assert md_row(*row) in md["Training: loss and learning rate"], step
    summary = read(run, "pipeline.json")["stages"]["train"]["summary"]
    assert cells("validation loss at the end", number(summary["eval_loss"])) in training
    peak = next(h for h in history if "peak_memory_gb" in h)
    assert (
        cells("peak memory", f"{number(peak['peak_memory_gb'])} GB (the process's resident memory (no GPU))")
        in (sections["resources"])
    )


def test_base_against_fine_tuned_shows_the_comparison_and_the_changed_cases(recorded):
    run, _, _ = recorded
    sections, md = page(run)
    results = read(run, "eval/results.json")
    compare = sections["compare"]
    for name in ("token_f1", "exact_match"):
        base, tuned = results["base"]["metrics"][name]["mean"], results["finetuned"]["metrics"][name]["mean"]
        assert cells(name, number(base), number(tuned), number(results["delta"][name])) in compare
        assert (
            md_row(name, number(base), number(tuned), number(results["delta"][name]))
            in md["Base against fine-tuned"]
        )
    pairs = zip(results["base"]["cases"], results["finetuned"]["cases"], strict=True)
    changes = [t["scores"]["token_f1"] - b["scores"]["token_f1"] for b, t in pairs]
    up, down = sum(c > 0 for c in changes), sum(c < 0 for c in changes)
    assert f"On token_f1: {up} of {len(changes)} cases improved, {down} got worse, " in compare
    shown = re.findall(r"<tr><td>(c?\w+-?\w*)</td><td>([+-]\d\.\d\d)</td>", compare)
    assert len(shown) == min(up, 5) + min(down, 5)  # the most improved and the most worsened, five at most
    assert '<a href="eval/report.html">' in compare


def test_serving_and_resources_show_every_load_level_of_the_benchmark(recorded):
    run, _, _ = recorded
    sections, md = page(run)
    bench = read(run, "bench/results.json")
    assert [r["load"]["concurrency"] for r in bench["runs"]] == [1, 2]
    assert "<svg" in sections["serving"] and "concurrency (requests in flight)" in sections["serving"]
    for r in bench["runs"]:
        s, res = r["summary"], r["resources"]
        lat = s["latency_ms"]
        percentiles = [
            " / ".join(number(lat[m][q]) for q in ("p50", "p95", "p99")) for m in ("ttft", "tpot", "e2e")
        ]
        counts = f"{s['requests']['completed']}/{s['requests']['total']}"
        label = f"concurrency {r['load']['concurrency']}"
        throughput = [number(s["request_throughput_rps"]), number(s["output_throughput_tok_s"])]
        row = [label, counts, *throughput, *percentiles]
        assert cells(*row) in sections["serving"]
        assert md_row(*row) in md["Serving: latency and throughput"]
        cpu = " / ".join(number(res["cpu_utilization_percent"][k]) for k in ("mean", "max"))
        memory = number(res["process_memory_gb"]["max"])
        assert cells(row[0], cpu, memory) in sections["resources"]


def test_cost_lists_each_price_with_its_date_source_and_check(recorded):
    run, _, _ = recorded
    sections, md = page(run)
    cost = read(run, "cost/cost.json")
    section = sections["cost"]
    training = (
        f"{usd(cost['training']['cost_usd'])} for {duration(cost['training']['hours'] * 3600)} (measured)"
    )
    assert cells("training", training) in section
    priced = [cost["instance"]["name"], *(r["instance"] for r in cost["serving_estimates"]["rows"])]
    assert len(priced) > 1
    catalog = load_catalog()
    rows = re.findall(r"<tr>(.*?)</tr>", section.split("Prices used")[1])
    for name in priced:
        inst = catalog.get(name)
        row = next(r for r in rows if r.startswith(f"<td>{name}</td>"))
        assert f"<td>{inst.price_date}</td>" in row, name
        assert f'<a href="{inst.source}">' in row, name
        if inst.note.startswith("not confirmed"):
            assert "<td>no</td>" in row, name
        assert "confirmed in this session" not in row  # said by the check column, not repeated
    c7i = catalog.get("c7i.large")
    assert md_row("c7i.large", usd(c7i.on_demand_usd_per_hour), c7i.price_date, "no") in md["Cost"]


def test_time_per_stage_is_what_pipeline_json_recorded(recorded):
    run, _, _ = recorded
    sections, md = page(run)
    stages = read(run, "pipeline.json")["stages"]
    for name in ("data", "train", "compare", "bench", "cost"):
        assert cells(name, duration(stages[name]["seconds"])) in sections["times"], name
        assert md_row(name, duration(stages[name]["seconds"])) in md["Time per stage"], name


def test_stages_that_did_not_run_are_one_line_each(recorded):
    _, partial, _ = recorded
    sections = html_sections(partial["report.html"])
    assert list(sections) == SECTIONS
    for key, stage in [("compare", "compare"), ("serving", "bench"), ("cost", "cost")]:
        one_line = rf"<h2>.*?</h2>\s*<p class=not-run>Not run: the {stage} stage did not run.*?</p>\s*"
        assert re.fullmatch(one_line, sections[key], re.S), key
    assert "<svg" in sections["training"] and cells("records read", "16") in sections["data"]
    assert "Serving: not run" in sections["resources"] and "peak memory" in sections["resources"]
    for name in ("compare", "bench", "cost"):
        assert cells(name, "not run") in sections["times"]
    md = md_sections(partial["report.md"])
    why = "the cost stage did not run for these settings (add it to --stages, or run without --stages)."
    assert md["Cost"].strip() == f"*Not run:* {why}"


def test_rendering_a_recorded_run_imports_no_torch(recorded):
    run, _, _ = recorded
    code = "\n".join([
        "import sys",
        "from tuneforge.pipeline.record import read_run",
        "from tuneforge.pipeline.report import render",
        f"render(read_run({str(run)!r}))",
        "print([m for m in ('torch', 'transformers') if m in sys.modules])",
    ])  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the most changed cases


def case(i, **scores):
    return {"id": f"c{i}", "reference": "r", "prediction": "p", "scores": scores}


def test_most_changed_cases_rank_by_the_metric_then_by_every_metric_then_test_order():
    base = [case(0, a=0.0, b=0.0), case(1, a=0.0, b=0.0), case(2, a=1.0, b=1.0), case(3, a=0.0, b=0.5)]
    tuned = [case(0, a=1.0, b=0.2), case(1, a=1.0, b=0.9), case(2, a=0.0, b=1.0), case(3, a=None, b=0.5)]
    results = {"base": {"metrics": {"a": {}, "b": {}}, "cases": base}, "finetuned": {"cases": tuned}}
    ranked = ranked_cases(results, "a")
    assert [(d, b["id"]) for d, b, _ in ranked] == [(1.0, "c1"), (1.0, "c0"), (0.0, "c3"), (-1.0, "c2")]


# --------------------------------------------------------------------------- the history file


def test_a_resumed_run_keeps_the_history_up_to_its_checkpoint_and_a_write_failure_is_not_fatal(
    tmp_path, caplog
):
    from types import SimpleNamespace

    from tuneforge.train.callbacks import HISTORY_FILE, TrackingCallback

    history = tmp_path / HISTORY_FILE
    history.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "loss": 1.0}\n{"st')
    callback = TrackingCallback(None)
    state = SimpleNamespace(global_step=2, num_input_tokens_seen=0, is_world_process_zero=True)
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), state, None)  # resumed at step 2
    callback.on_log(None, SimpleNamespace(**{**vars(state), "global_step": 3}), None, logs={"loss": 1.5})
    assert [json.loads(line) for line in history.read_text().splitlines()] == [
        {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 1.5}
    ]  # fmt: skip
    state.global_step = 0  # a fresh run starts an empty history
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert history.read_text() == ""
    history.unlink()
    history.mkdir()  # cannot be written: training goes on, with a warning
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    callback.on_log(None, state, None, logs={"loss": 1.0})
    assert "training goes on without it" in caplog.text
