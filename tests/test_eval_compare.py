"""Evaluation end to end on tiny models: test cases from a file, real generation, base vs fine-tuned."""

from __future__ import annotations

import pytest
from conftest import write_rows
from transformers import AutoModelForCausalLM

from tuneforge.config import SamplingParams
from tuneforge.data.cases import load_test_cases
from tuneforge.engines.base import cut_at_stop
from tuneforge.engines.transformers_engine import TransformersEngine
from tuneforge.errors import DatasetError
from tuneforge.eval.evaluator import ModelEvaluator
from tuneforge.models.tiny import build_tiny_model


class Recorder:
    """Wraps a real engine and records what reached it."""

    def __init__(self, engine):
        self.engine, self.name, self.seen = engine, engine.name, []

    def generate(self, prompts, sampling):
        self.seen.extend(prompts)
        return self.engine.generate(prompts, sampling)


def test_identical_inputs_reach_both_real_models(tiny_model_dir, tokenizer, tmp_path, small_data_file):
    other_dir = build_tiny_model(tmp_path / "other", seed=1)
    cases = load_test_cases(str(small_data_file), tokenizer)
    assert len(cases) == 16 and cases[0].reference == "1"
    assert cases[0].prompt.endswith("<|im_start|>assistant\n") and "Add 0 and 1." in cases[0].prompt
    base = Recorder(
        TransformersEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, 4, "base")
    )
    tuned = Recorder(
        TransformersEngine(AutoModelForCausalLM.from_pretrained(other_dir), tokenizer, 4, "tuned")
    )
    evaluator = ModelEvaluator(
        ["exact_match", "token_f1", "json_valid"], SamplingParams(temperature=0, max_tokens=5)
    )
    result = evaluator.compare_models(base, tuned, cases)
    assert base.seen == tuned.seen == [c.prompt for c in cases]
    assert result["base"]["num_examples"] == result["finetuned"]["num_examples"] == 16
    outputs = [c["prediction"] for c in result["base"]["cases"]]
    assert all(isinstance(o, str) for o in outputs)
    again = evaluator.evaluate_task(base, cases[:4])  # greedy: reproducible
    assert [c["prediction"] for c in again["cases"]] == outputs[:4]
    for name in ("exact_match", "token_f1", "json_valid"):
        b, t = result["base"]["metrics"][name]["mean"], result["finetuned"]["metrics"][name]["mean"]
        assert result["delta"][name] == pytest.approx(t - b)


def test_stop_strings_cut_the_output(tiny_model_dir, tokenizer):
    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    free = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8))[0]
    assert free.strip()
    stop = free[len(free) // 2 :]
    cut = engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=8, stop=[stop]))[0]
    assert cut == free[: free.find(stop)]  # everything before the stop string, which is left out
    assert cut_at_stop("abcSTOPdefEND", ["END", "STOP"]) == ("abc", True)


def test_missing_or_empty_test_data_fails_fast(tmp_path, tokenizer):
    with pytest.raises(DatasetError, match=r"no test data: set data\.test_file"):
        load_test_cases(None, tokenizer)
    with pytest.raises(DatasetError, match="file not found"):
        load_test_cases(str(tmp_path / "test.jsonl"), tokenizer)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DatasetError, match="file is empty"):
        load_test_cases(str(tmp_path / "empty.jsonl"), tokenizer)
    text = write_rows(tmp_path / "text.jsonl", [{"text": "just text"}])
    with pytest.raises(DatasetError, match="no reference to score"):
        load_test_cases(str(text), tokenizer)


def test_models_with_different_tokenizers_are_not_comparable_by_perplexity(tokenizer):
    import copy

    from tuneforge.eval.workflow import same_tokenizer

    assert same_tokenizer(tokenizer, copy.deepcopy(tokenizer))
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<new_token>"])
    assert not same_tokenizer(tokenizer, other)


@pytest.mark.parametrize(
    ("overrides", "cuda", "want"),
    [
        ([], False, "transformers"),  # CPU: transformers shares its model with the perplexity pass
        ([], True, "vllm"),  # CUDA: vLLM when installed
        (["inference.engine=vllm"], False, "vllm"),  # the server's engine when the recipe sets one
        (["inference.engine=transformers"], True, "transformers"),
        (["eval.engine=transformers", "inference.engine=vllm"], True, "transformers"),  # eval's own wins
        (["eval.engine=vllm"], False, "vllm"),
    ],
)
def test_comparison_engine_is_evals_then_the_servers_then_the_fastest_for_the_device(
    overrides, cuda, want, monkeypatch
):
    from tuneforge.engines import select
    from tuneforge.eval.workflow import generation_engine
    from tuneforge.recipes import load_recipe

    monkeypatch.setattr(select, "vllm_installed", lambda: True)
    assert generation_engine(load_recipe("configs/demo-cpu.yaml", overrides), cuda) == want


def test_an_unknown_comparison_engine_is_refused_with_its_choices():
    from tuneforge.errors import ConfigError
    from tuneforge.recipes import load_recipe

    with pytest.raises(ConfigError, match=r"engine.*auto.*vllm.*transformers"):
        load_recipe("configs/demo-cpu.yaml", ["eval.engine=tgi"])


@pytest.mark.parametrize("enabled", [True, False])
def test_compare_results_reach_mlflow_only_with_tracking_on(enabled, tmp_path, monkeypatch):
    from tuneforge.eval import report, workflow
    from tuneforge.recipes import load_recipe

    logged = []
    monkeypatch.setattr(report, "generate_report", lambda results, out, title: None)
    monkeypatch.setattr(workflow, "log_to_mlflow", lambda *a: logged.append(a) or "run-1")
    overrides = [f"tracking.enabled={str(enabled).lower()}", f"training.output_dir={tmp_path}"]
    recipe = load_recipe("configs/demo-cpu.yaml", overrides)
    out, run_id = workflow.save_results(recipe, {}, "t", str(tmp_path / "adapter"))
    assert out == tmp_path / "eval"
    assert (run_id, len(logged)) == (("run-1", 1) if enabled else (None, 0))
