"""Every shipped recipe loads and validates, on CPU, without weights."""

from __future__ import annotations

import pytest
from conftest import REPO

from tuneforge.recipes import load_recipe

RECIPES = sorted((REPO / "configs").glob("*.yaml"))


def test_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert "demo-cpu" in names
    assert {"llama3-8b-lora", "llama3-8b-qlora", "mistral-7b-lora", "mistral-7b-qlora"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.training.output_dir.endswith(path.stem)
    if "qlora" in path.stem:
        assert recipe.training.use_quantization
    if path.stem != "demo-cpu":  # GPU recipes use bf16 and fit long sequences
        assert recipe.training.bf16 and not recipe.training.fp16
        assert recipe.data.max_seq_length >= 2048
        # checkpointing and attention are left to the speed plan, so a large GPU skips recomputation
        assert recipe.training.gradient_checkpointing is None and recipe.training.auto_tune
        assert recipe.model.attn_implementation == "auto"


def test_demo_recipe_uses_the_embedded_model_and_demo_data():
    recipe = load_recipe(REPO / "configs" / "demo-cpu.yaml")
    assert recipe.model.name_or_path == "smollm2-135m-instruct"
    assert (REPO / recipe.data.train_file).is_file()
    assert (REPO / recipe.data.test_file).is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_compares_base_and_fine_tuned_greedily(path):
    from tuneforge.eval.evaluator import ModelEvaluator

    recipe = load_recipe(path)
    sampling = ModelEvaluator(recipe.eval.metrics, recipe.sampling).sampling
    assert (sampling.temperature, sampling.top_p) == (0.0, 1.0)
    assert sampling.max_tokens == recipe.sampling.max_tokens


def test_a_recipe_that_sets_sampling_is_followed_and_old_keys_say_where_they_went(tmp_path):
    from tuneforge.errors import ConfigError
    from tuneforge.eval.evaluator import ModelEvaluator

    recipe = load_recipe(None, ["sampling.temperature=0.8", "sampling.top_p=0.5"])
    sampling = ModelEvaluator(["exact_match"], recipe.sampling).sampling
    assert (sampling.temperature, sampling.top_p) == (0.8, 0.5)
    for key in ("temperature", "top_p", "max_tokens"):
        with pytest.raises(ConfigError, match=f"'inference.{key}' moved to 'sampling.{key}'"):
            load_recipe(None, [f"inference.{key}=1"])
    old = tmp_path / "old.yaml"
    old.write_text("inference:\n  temperature: 0.2\n")
    with pytest.raises(
        ConfigError, match=r"old\.yaml.*'inference\.temperature' moved to 'sampling\.temperature'"
    ):
        load_recipe(old)


def test_serve_takes_its_request_defaults_from_the_recipes_sampling(tmp_path):
    from tuneforge.cli import build_parser
    from tuneforge.command import parse
    from tuneforge.serve.cli import settings_from_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("sampling:\n  temperature: 0.3\n  max_tokens: 99\n")
    args = parse(build_parser(), ["serve", "--recipe", str(recipe), "sampling.top_p=0.9"])
    s = settings_from_args(args).sampling
    assert (s.temperature, s.top_p, s.max_tokens) == (0.3, 0.9, 99)
