"""ModelEvaluator: task accuracy on generated outputs, and base versus fine-tuned on exactly the same
inputs (test cases from tuneforge.data.cases).

Every case is evaluated and appears in the results; a case that fails to generate or to score is recorded
with its reason and the rest continue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from tuneforge.config import SamplingParams
from tuneforge.data.cases import TestCase
from tuneforge.eval.metrics import Metric, resolve_metric, score_case

log = logging.getLogger(__name__)


class ModelEvaluator:
    def __init__(self, metrics: Sequence[str] = ("exact_match",), sampling: SamplingParams | None = None):
        self.metric_names = list(metrics)
        self.metrics: dict[str, Metric] = {name: resolve_metric(name) for name in self.metric_names}
        self.sampling = (sampling or SamplingParams(max_tokens=128)).for_comparison()

    def evaluate_task(self, engine, test_cases: Sequence[TestCase], progress=None) -> dict[str, Any]:
        """Generate for every case (batched) and score every output with every metric."""
        prompts = [c.prompt for c in test_cases]
        start = time.perf_counter()
        predictions, generation_errors = self._generate_all(engine, prompts, progress)
        seconds = time.perf_counter() - start
        cases = []
        for case, prediction, error in zip(test_cases, predictions, generation_errors, strict=True):
            scored = score_case(prediction, case.reference, self.metrics)
            if error:
                scored["errors"] = {name: f"generation failed: {error}" for name in self.metrics}
            cases.append(
                {
                    "id": case.id,
                    "prompt": case.prompt,
                    "reference": case.reference,
                    "prediction": prediction,
                    **scored,
                }
            )
        return {
            "model": getattr(engine, "name", "model"),
            "cases": cases,
            "metrics": summarise(cases, self.metric_names),
            "num_examples": len(cases),
            "generation_seconds": seconds,
            "avg_generation_length": _mean([len(p) for p in predictions if p is not None]),
        }

    def _generate_all(
        self, engine, prompts: list[str], progress
    ) -> tuple[list[str | None], list[str | None]]:
        """One batched call; if it fails, case by case so one bad case does not lose the others."""
        try:
            out = list(engine.generate(prompts, self.sampling))
            if progress is not None:
                progress.update(len(prompts))
            return out, [None] * len(prompts)
        except Exception as batch_error:
            log.warning("batched generation failed (%s); retrying case by case", batch_error)
        predictions: list[str | None] = []
        errors: list[str | None] = []
        for prompt in prompts:
            try:
                predictions.append(engine.generate([prompt], self.sampling)[0])
                errors.append(None)
            except Exception as e:  # record and continue: every case must appear in the results
                predictions.append(None)
                errors.append(f"{type(e).__name__}: {e}")
            if progress is not None:
                progress.update(1)
        return predictions, errors

    def compare_models(self, base_engine, finetuned_engine, test_cases: Sequence[TestCase]) -> dict[str, Any]:
        """Both models on exactly the same cases, in the same order, with the same generation settings."""
        base = self.evaluate_task(base_engine, test_cases)
        tuned = self.evaluate_task(finetuned_engine, test_cases)
        delta = {
            name: (tuned["metrics"][name]["mean"] - base["metrics"][name]["mean"])
            if base["metrics"][name]["mean"] is not None and tuned["metrics"][name]["mean"] is not None
            else None
            for name in self.metric_names
        }
        return {
            "base": base,
            "finetuned": tuned,
            "delta": delta,
            "sampling": vars(self.sampling),
            "case_ids": [c.id for c in test_cases],
        }


def deltas(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, float | None]:
    """Fine-tuned minus base, per metric (None where either could not be computed)."""
    out = {}
    for name, summary in base["metrics"].items():
        b, t = summary["mean"], tuned["metrics"][name]["mean"]
        out[name] = t - b if b is not None and t is not None else None
    return out


def summarise(cases: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per metric: mean over the cases it could score, how many it scored, how many failed."""
    out = {}
    for name in names:
        values = [c["scores"][name] for c in cases if c["scores"][name] is not None]
        out[name] = {"mean": _mean(values), "scored": len(values), "failed": len(cases) - len(values)}
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
