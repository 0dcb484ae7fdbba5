"""The stages `tuneforge run` composes, each a call into its stage's own functions (no shelling out, except
the server, which runs as `tuneforge serve` does in production: its own process, benchmarked over HTTP).

    data     validate, tokenize and split the data (data/preprocessor.py), save it and its statistics
    train    train.workflow.run_training: resumes from the last complete checkpoint after a crash
    compare  eval.workflow.run_compare: base against fine-tuned on the same cases, reports, MLflow
    bench    `tuneforge serve --adapter` in a child process, loaded by bench's own command
    cost     cost's own `gpus` command on the measured training time and benchmark
    report   one page of the whole run, report.html and report.md (pipeline/report.py)

Each stage declares the recipe sections it reads and the stages it builds on; pipeline/state.py decides from
these what to skip.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.command import ServerNotReady, stop_process, wait_ready
from tuneforge.config import Recipe
from tuneforge.errors import TuneforgeError
from tuneforge.pipeline.console import COMMANDS_LOG
from tuneforge.recipes import dump_recipe

log = logging.getLogger(__name__)
ADAPTER_NAME = "tuned"  # what the benchmark asks the server for


class StageFailed(TuneforgeError):
    """A stage could not finish; the message says which and why (what finished before is kept)."""


@dataclass
class Options:
    """What `tuneforge run` takes besides the recipe."""

    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    requests: int = 8
    output_len: int = 48
    instance: str = "c7i.large"
    """Catalog instance that prices the run (the machine it ran on, or the one to compare with)."""
    serve_timeout_s: float = 900.0


@dataclass
class Context:
    recipe: Recipe
    folder: Path
    options: Options
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Summaries of the stages run or skipped so far (name -> summary)."""


@dataclass
class Outcome:
    outputs: list[str]
    """Files or folders written, relative to the run folder."""
    summary: dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    """Recipe sections (or section.key) whose values decide the stage's result."""
    after: tuple[str, ...]
    run: Callable[[Context], Outcome]
    shows_what_ran: bool = False
    """Its result shows which stages are done (the report): it runs again when that changes."""

    def settings(self, recipe: Recipe, options: Options) -> dict[str, Any]:
        plain = dataclasses.asdict(recipe)
        out: dict[str, Any] = {}
        for key in self.reads:
            section, _, leaf = key.partition(".")
            if section == "options":
                out[key] = getattr(options, leaf) if leaf else dataclasses.asdict(options)
            else:
                out[key] = plain[section][leaf] if leaf else plain[section]
        return out


# --------------------------------------------------------------------------- the stages


def run_data(ctx: Context) -> Outcome:
    from tuneforge.data import DatasetPreprocessor
    from tuneforge.models.loading import tokenizer_for

    prepared = DatasetPreprocessor(tokenizer_for(ctx.recipe.model), ctx.recipe.data).prepare()
    prepared.save(ctx.folder / "data")
    s = prepared.stats
    keys = (
        "source",
        "format",
        "records",
        "valid",
        "invalid_skipped",
        "train_examples",
        "validation_examples",
    )
    summary = {k: s.get(k) for k in keys} | {
        "tokens": s.get("tokens"),
        "token_lengths": s.get("token_lengths"),
    }
    return Outcome(["data/stats.json"], summary)


def run_train(ctx: Context) -> Outcome:
    from tuneforge.cost.cli import preflight
    from tuneforge.train.workflow import run_training

    preflight(ctx.recipe)
    outcome = run_training(ctx.recipe, resume="auto")
    if outcome.stopped_early == "interrupted":
        raise StageFailed(f"training was interrupted at step {outcome.global_step}; run again to resume")
    summary = {
        "global_step": outcome.global_step,
        "run_id": outcome.run_id,
        "stopped_early": outcome.stopped_early,
    }
    summary |= {k: v for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
    adapter = Path(outcome.adapter_dir).resolve().relative_to(ctx.folder.resolve())
    return Outcome([str(adapter / "adapter_config.json")], summary)


def adapter_dir(ctx: Context) -> Path:
    return ctx.folder / Path(ctx.results["train"]["outputs"][0]).parent


def run_compare(ctx: Context) -> Outcome:
    from tuneforge.eval.workflow import run_compare as compare
    from tuneforge.eval.workflow import save_results

    adapter = str(adapter_dir(ctx))
    results = compare(ctx.recipe, adapter)
    out, run_id = save_results(ctx.recipe, results, "Base versus fine-tuned", adapter)
    summary = {
        "example": most_improved_case(results),
        "report": os.path.relpath(out / "report.html", ctx.folder),
        "mlflow_run_id": run_id,
        "delta": results["delta"],
        **{
            side: {
                "perplexity": results[side].get("perplexity"),
                "metrics": {n: m["mean"] for n, m in results[side]["metrics"].items()},
            }
            for side in ("base", "finetuned")
        },
    }
    return Outcome([os.path.relpath(out / "results.json", ctx.folder)], summary)


def most_improved_case(results: dict[str, Any]) -> dict[str, Any] | None:
    """The test case whose first metric gained most from fine-tuning: its id, the last line of its prompt,
    the reference and both answers (what a person checks first)."""
    base, tuned = results["base"].get("cases") or [], results["finetuned"].get("cases") or []
    if not base or not tuned:
        return None
    metric = next(iter(tuned[0]["scores"]))

    def gain(pair):
        b, t = (c["scores"].get(metric) for c in pair)
        return (t or 0.0) - (b or 0.0)

    b, t = max(zip(base, tuned, strict=True), key=gain)
    text = re.sub(r"<\|[^|]*\|>", "", b["prompt"])  # chat template tokens such as <|im_end|>
    roles = {"system", "user", "assistant"}
    prompt_lines = [ln for ln in text.splitlines() if ln.strip() and ln.strip().lower() not in roles]
    prompt = prompt_lines[-1] if prompt_lines else b["prompt"][-200:]
    return {"id": b["id"], "metric": metric, "prompt": prompt, "reference": b["reference"],
            "base": b["prediction"], "finetuned": t["prediction"]}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(ctx: Context):
    """`tuneforge serve` of the recipe's model with the trained adapter, in a child process whose log goes
    to the run folder; yields (base URL, pid) once /ready answers 200, stops it on the way out."""
    recipe_file = ctx.folder / "run-recipe.yaml"
    recipe_file.write_text(dump_recipe(ctx.recipe))
    port = free_port()
    cmd = [sys.executable, "-m", "tuneforge.cli", "serve", "--recipe", str(recipe_file), "--port", str(port),
           "--adapter", f"{ADAPTER_NAME}={adapter_dir(ctx)}"]  # fmt: skip
    log_path = ctx.folder / "serve.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(f"{base}/ready", proc, ctx.options.serve_timeout_s, log_path)
        except ServerNotReady as e:
            raise StageFailed(str(e)) from None
        yield base, proc.pid
    finally:
        stop_process(proc)


def _command(register: Callable, argv: list[str]) -> int:
    """Run one of a stage's own commands in this process, parsed by that stage's own parser. Its tables
    reach the terminal; its machine-readable JSON line (kilobytes) goes to the run's log instead."""
    import io

    parser = argparse.ArgumentParser(prog="tuneforge")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return args.func(args)
    finally:
        for line in out.getvalue().splitlines():
            if line.startswith("{"):
                logging.getLogger(COMMANDS_LOG).info("%s %s", argv[0], line)
            else:
                print(line)


def run_bench(ctx: Context) -> Outcome:
    from tuneforge.bench.cli import register
    from tuneforge.results import read_bench_results
    from tuneforge.tracking import recorded_run_id

    out = ctx.folder / "bench"
    test_file = ctx.recipe.data.test_file or ctx.recipe.data.train_file
    with serving(ctx) as (base, pid):
        argv = ["bench", "--url", base, "--model", ADAPTER_NAME, "--prompts", test_file,
                "--concurrency", ",".join(map(str, ctx.options.concurrency)),
                "--requests", str(ctx.options.requests), "--output-len", str(ctx.options.output_len),
                "--server-pid", str(pid), "--out", str(out)]  # fmt: skip
        run_id = recorded_run_id(adapter_dir(ctx).parent)
        if run_id:
            argv += ["--mlflow-run-id", run_id]
            if ctx.recipe.tracking.tracking_uri:  # the store the run is in, not the default one
                argv += ["--tracking-uri", ctx.recipe.tracking.tracking_uri]
        if _command(register, argv) != 0:
            raise StageFailed(f"the benchmark completed no request; see {out} and {ctx.folder / 'serve.log'}")
    results = read_bench_results(out / "results.json")
    levels = [
        {
            "load": r.load.label(),
            "requests_per_s": r.summary.request_throughput_rps,
            "output_tok_s": r.summary.output_throughput_tok_s,
            "completed": r.summary.requests.completed,
        }
        for r in results.runs
    ]
    return Outcome(["bench/results.json"], {"levels": levels, "device": results.server_device})


def run_cost(ctx: Context) -> Outcome:
    from tuneforge.cost.cli import register

    out = ctx.folder / "cost"
    bench = str(ctx.folder / "bench" / "results.json")
    argv = ["cost", "gpus", "--instance", ctx.options.instance, "--bench", bench,
            "--model", ctx.recipe.model.name_or_path, "--top", "5", "--out", str(out)]  # fmt: skip
    seconds = ctx.results.get("train", {}).get("summary", {}).get("train_runtime")
    if seconds:
        argv += ["--hours", f"{seconds / 3600:.6f}"]
    if _command(register, argv) != 0:
        raise StageFailed(f"cost failed; see {out}")
    return Outcome(["cost/cost.json"], {"report": str(out / "cost.html")})


def run_report(ctx: Context) -> Outcome:
    from tuneforge.pipeline.report import write_report

    path = write_report(ctx)
    return Outcome([path.name], {"report": str(path)})


MODEL_AND_DATA = ("model", "data")
STAGES: tuple[Stage, ...] = (
    Stage("data", MODEL_AND_DATA, (), run_data),
    Stage("train", (*MODEL_AND_DATA, "lora", "quantization", "training"), ("data",), run_train),
    Stage("compare", (*MODEL_AND_DATA, "eval", "sampling", "inference"), ("train",), run_compare),
    Stage(
        "bench",
        ("inference", "sampling", "options.concurrency", "options.requests", "options.output_len"),
        ("train",),
        run_bench,
    ),
    Stage("cost", ("options.instance",), ("train", "bench"), run_cost),
    Stage("report", (), ("data", "train", "compare", "bench", "cost"), run_report, shows_what_ran=True),
)
NAMES = tuple(s.name for s in STAGES)
