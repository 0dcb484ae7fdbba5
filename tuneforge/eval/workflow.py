"""`tuneforge eval` and `tuneforge compare`: load models, score perplexity and task metrics, write reports,
log them to the training run in MLflow.

    tuneforge compare configs/demo-cpu.yaml --adapter runs/demo-cpu/adapter
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tuneforge.config import Recipe
from tuneforge.eval.evaluator import ModelEvaluator, PlainTextData, TestCase, deltas, load_test_cases

log = logging.getLogger(__name__)


def load_model(recipe: Recipe, reference: str | None = None, adapter: str | Path | None = None):
    """(model, tokenizer, name): a base model, or base + adapter merged for fast generation."""
    from tuneforge.models.resolve import load_tokenizer, resolve_model
    from tuneforge.train.builders import load_base_model

    ref = reference or recipe.model.name_or_path
    m = recipe.model
    tokenizer = load_tokenizer(ref, m.cache_dir, m.revision, m.trust_remote_code)
    model = load_base_model(resolve_model(ref, m.cache_dir).path, replace(m, name_or_path=ref), None, ref)
    name = ref
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        name = f"{ref} + {adapter}"
    return model.eval(), tokenizer, name


def test_perplexity(model, tokenizer, recipe: Recipe, data_file: str, limit: int | None) -> dict[str, Any]:
    """Token-weighted perplexity of the test data: over the responses of instruction data (all tokens with
    data.train_on=all), and over every token of plain text, in sliding windows when it is long."""
    from dataclasses import replace as copy_with

    from tuneforge.data import DatasetPreprocessor
    from tuneforge.eval.likelihood import dataset_perplexity, text_perplexity
    from tuneforge.eval.perplexity import PerplexityAccumulator

    pre = DatasetPreprocessor(tokenizer, replace(recipe.data, train_file=data_file, validation_fraction=0.0))
    loaded = pre.load_dataset()
    pre.check(loaded)
    n = min(limit or len(loaded.examples), len(loaded.examples))
    loaded = copy_with(loaded, examples=loaded.examples[:n], locations=loaded.locations[:n])
    with tqdm(total=n, desc="perplexity", unit="ex") as bar:
        if loaded.format == "text":
            window = recipe.eval.window or recipe.data.max_seq_length
            stride = recipe.eval.stride or max(1, window // 2)
            acc = PerplexityAccumulator()
            for example in loaded.examples:
                ids = tokenizer(example.text)["input_ids"]
                part = text_perplexity(model, ids, window, stride, tokenizer.pad_token_id)
                acc.add_sum(part.nll_sum, part.tokens)
                bar.update(1)
        else:
            rows, _ = pre.prepare_dataset(loaded)
            acc = dataset_perplexity(
                model, rows["input_ids"], rows["labels"], tokenizer.pad_token_id, recipe.eval.batch_size, bar
            )
    return {"perplexity": acc.perplexity, "perplexity_tokens": acc.tokens}


def evaluate_one(
    recipe: Recipe, model, tokenizer, name: str, cases: list[TestCase], data_file: str
) -> dict[str, Any]:
    from tuneforge.engines.transformers_engine import TransformersEngine

    evaluator = ModelEvaluator(recipe.eval.metrics, recipe.sampling)
    engine = TransformersEngine(model, tokenizer, recipe.eval.batch_size, name)
    with tqdm(total=len(cases), desc=f"generating ({name})", unit="case") as bar:
        result = evaluator.evaluate_task(engine, cases, bar)
    if recipe.eval.perplexity:
        result.update(test_perplexity(model, tokenizer, recipe, data_file, recipe.eval.limit))
    return result


def _cases(recipe: Recipe, tokenizer, data_file: str | None) -> tuple[str, list[TestCase]]:
    """The test cases; none for plain text, which is scored by perplexity alone."""
    path = data_file or recipe.data.test_file
    try:
        cases = load_test_cases(path, tokenizer, recipe.data)
    except PlainTextData:
        log.info("%s is plain text: perplexity only, no task metrics", path)
        return path, []
    return path, cases[: recipe.eval.limit] if recipe.eval.limit else cases


def run_eval(recipe: Recipe, adapter: str | None = None, data_file: str | None = None) -> dict[str, Any]:
    model, tokenizer, name = load_model(recipe, adapter=adapter)
    path, cases = _cases(recipe, tokenizer, data_file)
    result = evaluate_one(recipe, model, tokenizer, name, cases, path)
    result["sampling"] = vars(recipe.sampling)
    return result


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template


def run_compare(
    recipe: Recipe, adapter: str | None = None, other: str | None = None, data_file: str | None = None
) -> dict[str, Any]:
    """Base (the recipe's model) against base + adapter, or against another model, on the same cases."""
    if adapter is None and other is None:
        raise ValueError("compare needs --adapter or --other")
    notes: list[str] = []
    base_model, base_tok, base_name = load_model(recipe)
    path, cases = _cases(recipe, base_tok, data_file)
    base = evaluate_one(recipe, base_model, base_tok, base_name, cases, path)
    del base_model
    tuned_model, tuned_tok, tuned_name = load_model(recipe, reference=other, adapter=adapter)
    if not same_tokenizer(base_tok, tuned_tok):
        # different prompts and tokens: task metrics still compare on the base model's prompts,
        # perplexities do not compare at all
        notes.append(
            "the two models have different tokenizers, so their perplexities are not comparable "
            "and none is reported; task metrics use the same prompts for both"
        )
        log.warning("%s", notes[-1])
        recipe = replace(recipe, eval=replace(recipe.eval, perplexity=False))
        base.pop("perplexity", None)
        base.pop("perplexity_tokens", None)
    tuned = evaluate_one(recipe, tuned_model, tuned_tok, tuned_name, cases, path)
    return {
        "base": base,
        "finetuned": tuned,
        "delta": deltas(base, tuned),
        "sampling": vars(recipe.sampling),
        "case_ids": [c.id for c in cases],
        "data": path,
    }


def log_to_mlflow(results: dict[str, Any], report_dir: Path, run_file: Path) -> str | None:
    """Add the metrics and the report to the training run recorded in `run_file` (mlflow_run.json)."""
    if not run_file.is_file():
        return None
    from tuneforge.train.tracking import ExperimentTracker

    info = json.loads(run_file.read_text())
    tracker = ExperimentTracker(info.get("tracking_uri"))
    tracker.run_id = info["run_id"]
    metrics = {}
    runs = (
        {"base": results["base"], "finetuned": results["finetuned"]}
        if "finetuned" in results
        else {"": results}
    )
    for prefix, run in runs.items():
        key = f"eval/{prefix + '/' if prefix else ''}"
        metrics.update({f"{key}{n}": s["mean"] for n, s in run["metrics"].items() if s["mean"] is not None})
        if run.get("perplexity") is not None:
            metrics[f"{key}perplexity"] = run["perplexity"]
    tracker.log_metrics(metrics, step=0)
    for name in ("report.md", "report.html", "results.json"):
        tracker.log_artifact(report_dir / name, "eval")
    return tracker.run_id
