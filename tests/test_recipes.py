"""Every shipped recipe loads and validates, on CPU, without weights."""

from __future__ import annotations

import pytest
from conftest import REPO

from tuneforge.config import load_recipe

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
