"""`tuneforge eval` and `tuneforge compare` from the command line, on tiny models."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from mlflow.tracking import MlflowClient
from test_train_cli import last_json, tuneforge, write_recipe


def test_compare_writes_reports_and_logs_to_the_training_run(tiny_model_dir, small_data_file, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, small_data_file, tmp_path / "run", uri)
    assert tuneforge("train", str(recipe), "training.max_steps=2").returncode == 0
    overrides = [
        f"data.test_file={small_data_file}",
        "eval.limit=6",
        "sampling.max_tokens=4",
        "eval.metrics=[exact_match,token_f1]",
        "sampling.temperature=0",
    ]
    out = tuneforge("compare", str(recipe), *overrides, "--adapter", str(tmp_path / "run" / "adapter"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    assert result["base"]["num_examples"] == result["finetuned"]["num_examples"] == 6
    assert result["base"]["perplexity"] > 1 and result["finetuned"]["perplexity"] > 1
    assert set(result["delta"]) == {"exact_match", "token_f1"}
    report = tmp_path / "run" / "eval"
    saved = json.loads((report / "results.json").read_text())
    assert saved["case_ids"] == [f"s{i}" for i in range(6)]
    HTMLParser().feed((report / "report.html").read_text())  # parses
    assert "| perplexity |" in (report / "report.md").read_text()
    client = MlflowClient(uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["eval/finetuned/perplexity"] == result["finetuned"]["perplexity"]
    assert "eval/base/exact_match" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} >= {"eval/report.html"}


def test_eval_of_one_model_and_compare_needs_a_second(tiny_model_dir, small_data_file, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model_dir,
        small_data_file,
        tmp_path / "run",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    out = tuneforge(
        "eval",
        str(recipe),
        "eval.limit=3",
        "sampling.max_tokens=3",
        "sampling.temperature=0",
        "--data",
        str(small_data_file),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = last_json(out.stdout)
    assert result["model"]["num_examples"] == 3 and result["mlflow_run_id"] is None
    out = tuneforge("compare", str(recipe))
    assert out.returncode == 2 and "--adapter" in out.stderr


def test_long_plain_texts_are_scored_in_sliding_windows(tiny_model_dir, tmp_path):
    from conftest import write_rows
    from transformers import AutoTokenizer

    words = "the quick brown fox jumps over the lazy dog " * 40
    data = write_rows(tmp_path / "texts.jsonl", [{"text": words}, {"text": words[:300]}])
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, data, tmp_path / "run", "sqlite:///x.db")
    out = tuneforge("eval", str(recipe), "data.max_seq_length=64", "eval.stride=32", "--data", str(data))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tokenizer(t)["input_ids"]) for t in (words, words[:300])]
    assert lengths[0] > 64  # longer than the context: needs windows, not truncation
    assert result["perplexity_tokens"] == sum(n - 1 for n in lengths)  # every token after the first, once
    assert result["num_examples"] == 0  # no references: no task metrics


@pytest.mark.vllm
@pytest.mark.slow
def test_compare_generates_through_vllm_with_the_same_results_as_transformers(tmp_path):
    """Evaluation generates through the server's engine when vLLM is installed; in float32 its
    results are those of the transformers path, case by case."""
    pytest.importorskip("vllm")
    from test_serve_real import random_adapter

    from tuneforge.models.resolve import resolve_model

    adapter = random_adapter(resolve_model("smollm2-135m-instruct").path, tmp_path / "adapter")
    common = [
        "configs/demo-cpu.yaml",
        "eval.limit=6",
        "eval.perplexity=false",
        f"training.output_dir={tmp_path / 'run'}",
        "--adapter",
        str(adapter),
    ]
    results = {}
    for engine in ("vllm", "transformers"):
        out = tuneforge("compare", *common[:4], f"inference.engine={engine}", *common[4:])
        assert out.returncode == 0, out.stderr[-3000:]
        results[engine] = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["vllm"]["base"]["engine"] == "vllm"
    for side in ("base", "finetuned"):
        by_engine = [[c["prediction"] for c in results[e][side]["cases"]] for e in ("vllm", "transformers")]
        assert by_engine[0] == by_engine[1]
    assert results["vllm"]["base"]["cases"] != results["vllm"]["finetuned"]["cases"]
