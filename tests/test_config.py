"""Recipes: precedence, unknown keys, wrong types, range checks, and field documentation."""

from __future__ import annotations

import dataclasses

import pytest

from tuneforge.config import (
    SECTIONS,
    LoRAConfig,
    Recipe,
    SamplingParams,
    TrainingConfig,
)
from tuneforge.errors import ConfigError
from tuneforge.recipes import all_keys, field_docs, flatten, load_recipe, recipe_to_dict


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_field_has_a_default_and_a_docstring():
    Recipe()  # every field has a default
    for cls in [Recipe, *SECTIONS.values()]:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            assert "\n" not in docs[f.name], f"{cls.__name__}.{f.name}: docstring is not one line"


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "training:\n  learning_rate: 1.0e-3\n  logging_steps: 7\nlora:\n  r: 8\n")
    recipe = load_recipe(path, ["training.learning_rate=5e-5", "lora.target_modules=[q_proj,v_proj]"])
    assert recipe.training.learning_rate == 5e-5  # override beats YAML
    assert recipe.training.logging_steps == 7  # YAML beats default
    assert recipe.lora.r == 8
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.training.gradient_accumulation_steps == TrainingConfig().gradient_accumulation_steps


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; the typed schema must still accept it as a float.
    recipe = load_recipe(write(tmp_path, "training:\n  learning_rate: 1e-4\n"))
    assert recipe.training.learning_rate == pytest.approx(1e-4)


def test_unknown_key_in_yaml_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "training:\n  lerning_rate: 1.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and "training.lerning_rate" in msg and "training.learning_rate" in msg


def test_unknown_key_in_wrong_section_suggests_the_right_section():
    with pytest.raises(ConfigError, match=r"unknown key 'training.r'.*'lora.r'"):
        load_recipe(None, ["training.r=8"])


def test_misspelt_section_is_suggested():
    with pytest.raises(ConfigError, match=r"'trainig'.*did you mean 'training'"):
        load_recipe(None, ["trainig.learning_rate=1"])


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "lora:\n  r: sixteen\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(path) in str(e.value) and "lora.r" in str(e.value) and "sixteen" in str(e.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("lora.r=0", "lora.r"),
        ("lora.lora_alpha=-1", "lora.lora_alpha"),
        ("lora.lora_dropout=1.5", "lora.lora_dropout"),
        ("training.learning_rate=0", "training.learning_rate"),
        ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps"),
        ("training.warmup_ratio=1.0", "training.warmup_ratio"),
        ("data.validation_fraction=0.9", "data.validation_fraction"),
        ("data.max_seq_length=2", "data.max_seq_length"),
        ("sampling.temperature=3", "sampling.temperature"),
        ("sampling.top_p=0", "sampling.top_p"),
        ("sampling.max_tokens=0", "sampling.max_tokens"),
        ("inference.gpu_memory_utilization=1.5", "inference.gpu_memory_utilization"),
        ("inference.tensor_parallel_size=0", "inference.tensor_parallel_size"),
        ("inference.max_num_seqs=0", "inference.max_num_seqs"),
        ("inference.max_num_batched_tokens=0", "inference.max_num_batched_tokens"),
        ("inference.stream_interval=0", "inference.stream_interval"),
    ],
)
def test_range_checks_name_the_key_and_the_source(override, key):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override])
    assert key in str(e.value) and "command-line override" in str(e.value)


def test_range_error_from_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "lora:\n  lora_dropout: 2.0\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: lora.lora_dropout: must be in \[0, 1\]"):
        load_recipe(path)


def test_bad_choice_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"data.format: 'alpacca'.*did you mean 'alpaca'"):
        load_recipe(None, ["data.format=alpacca"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "training:\n  learning_rate: 1\n lora: [\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_recipe_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_missing_recipe_suggests_a_close_name(tmp_path):
    write(tmp_path, "name: x\n", "demo-cpu.yaml")
    with pytest.raises(ConfigError, match=r"not found; did you mean .*demo-cpu.yaml"):
        load_recipe(tmp_path / "demo_cpu.yaml")


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_recipe(None, ["training.learning_rate"])


def test_a_single_string_is_accepted_for_a_list_of_strings(tmp_path):
    recipe = load_recipe(write(tmp_path, "lora:\n  target_modules: all-linear\n"), ["sampling.stop=END"])
    assert recipe.lora.target_modules == ["all-linear"]
    assert recipe.sampling.stop == ["END"]


def test_all_linear_cannot_be_mixed_with_names():
    with pytest.raises(ConfigError, match="target_modules"):
        LoRAConfig(target_modules=["all-linear", "q_proj"])


def test_fp16_and_bf16_together_is_an_error():
    with pytest.raises(ConfigError, match="bf16"):
        TrainingConfig(fp16=True, bf16=True)


def test_sampling_params_checks_stop_strings():
    with pytest.raises(ConfigError, match="stop"):
        SamplingParams(stop=[""])


def test_flatten_keeps_every_key():
    flat = flatten(recipe_to_dict(Recipe()))
    assert set(flat) == set(all_keys())


def test_yaml_no_is_read_as_the_string_no(tmp_path):
    # YAML 1.1 reads a bare `no` as false; strategy fields take the string.
    recipe = load_recipe(write(tmp_path, "training:\n  eval_strategy: no\n"), ["training.save_strategy=no"])
    assert (recipe.training.eval_strategy, recipe.training.save_strategy) == ("no", "no")


def test_sampling_left_unset_is_greedy_for_comparisons_and_1_for_engines():
    from tuneforge.config import SamplingParams

    unset = SamplingParams(max_tokens=7)
    assert (unset.temperature, unset.top_p) == (None, None)
    greedy, engine = unset.for_comparison(), unset.concrete()
    assert (greedy.temperature, greedy.top_p, greedy.max_tokens) == (0.0, 1.0, 7)
    assert (engine.temperature, engine.top_p, engine.max_tokens) == (1.0, 1.0, 7)
    chosen = SamplingParams(temperature=0.3, top_p=0.8)
    assert chosen.for_comparison() == chosen == chosen.concrete()
