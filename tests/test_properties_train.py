"""Properties 5-15 of the design: LoRA configuration and adapters, QLoRA, gradient accumulation, and
MLflow tracking, on tiny models with a real SQLite MLflow store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import quiet_training
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from transformers import TrainerCallback

from tuneforge.config import LoRAConfig, QuantizationConfig, Recipe, TrainingConfig
from tuneforge.recipes import flatten, recipe_to_dict
from tuneforge.tracking import ExperimentTracker
from tuneforge.train.builders import build_lora_config
from tuneforge.train.trainer import LoRATrainer

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = st.lists(st.sampled_from(MODULES), min_size=1, max_size=7, unique=True)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


# Feature: llm-fine-tuning-inference, Property 5: LoRA configuration sets all parameters
@SETTINGS
@given(
    r=st.integers(1, 256),
    alpha=st.integers(1, 512),
    dropout=st.floats(0, 1),
    targets=TARGETS,
    all_linear=st.booleans(),
)
def test_property_5_lora_configuration_sets_all_parameters(r, alpha, dropout, targets, all_linear):
    modules = ["all-linear"] if all_linear else targets
    peft_config = build_lora_config(
        LoRAConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules)
    )
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (r, alpha, dropout)
    assert peft_config.target_modules == ("all-linear" if all_linear else set(targets))


# Feature: llm-fine-tuning-inference, Property 6: LoRA creates adapters for target modules
@SETTINGS
@given(targets=TARGETS, r=st.integers(1, 8))
def test_property_6_lora_creates_adapters_for_exactly_the_target_modules(tiny_model_dir, targets, r):
    model = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=r, target_modules=targets)).prepare_model()
    adapted = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    layers = model.config.num_hidden_layers
    assert {name.rsplit(".", 1)[1] for name in adapted} == set(targets)
    assert len(adapted) == layers * len(targets)
    assert all(
        module.lora_A["default"].out_features == r
        for name, module in model.named_modules()
        if hasattr(module, "lora_A")
    )


# Feature: llm-fine-tuning-inference, Property 7: LoRA training preserves base weights (Invariant)
@SETTINGS
@given(targets=TARGETS, lr=st.floats(1e-4, 5e-2), steps=st.integers(1, 2), seed=st.integers(0, 1000))
def test_property_7_training_preserves_base_weights(tiny_model_dir, train_data, targets, lr, steps, seed):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=4, target_modules=targets))
    model = trainer.prepare_model()
    before_base, before_lora = base_state(model), lora_state(model)
    with tempfile.TemporaryDirectory() as out:
        trainer.train(train_data[0], None, quiet_training(out, learning_rate=lr, max_steps=steps, seed=seed))
    after_base, after_lora = base_state(model), lora_state(model)
    assert all(torch.equal(before_base[n], after_base[n]) for n in before_base)
    assert any(not torch.equal(before_lora[n], after_lora[n]) for n in before_lora)


# Feature: llm-fine-tuning-inference, Property 8: LoRA saves only adapter weights
@SETTINGS
@given(targets=TARGETS, r=st.integers(1, 8))
def test_property_8_lora_saves_only_adapter_weights(tiny_model_dir, targets, r):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=r, target_modules=targets))
    model = trainer.prepare_model()
    with tempfile.TemporaryDirectory() as out:
        trainer.save_adapter(out)
        with safe_open(str(Path(out) / "adapter_model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
        saved_files = {p.name for p in Path(out).iterdir()}
    n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    assert len(keys) == n_lora and all("lora_A" in k or "lora_B" in k for k in keys)
    assert not any(
        name.endswith(("model.safetensors", ".bin")) and name != "adapter_model.safetensors"
        for name in saved_files
    )


QUANT = st.builds(
    QuantizationConfig,
    quant_type=st.sampled_from(["nf4", "fp4"]),
    double_quant=st.booleans(),
    compute_dtype=st.sampled_from(["float32", "bfloat16"]),
)


# Feature: llm-fine-tuning-inference, Property 9: QLoRA quantizes to 4-bit
@SETTINGS
@given(quant=QUANT, targets=TARGETS)
def test_property_9_qlora_stores_base_weights_in_4_bits(tiny_model_dir, quant, targets):
    import bitsandbytes as bnb

    model = LoRATrainer(
        str(tiny_model_dir), LoRAConfig(r=2, target_modules=targets), quantization=quant
    ).prepare_model(use_quantization=True)
    linears = [m for n, m in model.named_modules() if n.endswith("base_layer")]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    for m in linears:
        assert m.weight.dtype == torch.uint8  # two 4-bit values per byte
        assert m.weight.numel() * 2 == m.in_features * m.out_features
        assert m.weight.quant_state.quant_type == quant.quant_type


class StepRecorder(TrainerCallback):
    """Snapshots the adapter weights after every micro-step and every optimizer step."""

    def __init__(self, model):
        self.model, self.events = model, []

    def on_substep_end(self, args, state, control, **kwargs):
        self.events.append(("micro", lora_state(self.model)))

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step", lora_state(self.model)))


# Feature: llm-fine-tuning-inference, Property 10: Gradient accumulation delays updates
@SETTINGS
@given(accumulation=st.integers(1, 4), steps=st.integers(1, 2))
def test_property_10_gradient_accumulation_delays_updates(tiny_model_dir, train_data, accumulation, steps):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model = trainer.prepare_model()
    recorder = StepRecorder(model)
    previous = lora_state(model)
    with tempfile.TemporaryDirectory() as out:
        cfg = quiet_training(
            out, gradient_accumulation_steps=accumulation, max_steps=steps, per_device_train_batch_size=1
        )
        trainer.train(train_data[0], None, cfg, callbacks=[recorder])
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == (["micro"] * (accumulation - 1) + ["step"]) * steps
    for kind, state in recorder.events:
        changed = any(not torch.equal(previous[n], state[n]) for n in state)
        assert changed == (kind == "step"), (
            f"weights {'unchanged' if kind == 'step' else 'changed'} at {kind}"
        )
        previous = state


# Feature: llm-fine-tuning-inference, Property 11: QLoRA saves config and weights
@SETTINGS
@given(quant=QUANT, r=st.integers(1, 8))
def test_property_11_qlora_saves_quantization_config_and_adapter(tiny_model_dir, quant, r):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=r), quantization=quant)
    trainer.prepare_model(use_quantization=True)
    with tempfile.TemporaryDirectory() as out:
        trainer.save_adapter(out)
        saved = json.loads((Path(out) / "quantization_config.json").read_text())
        with safe_open(str(Path(out) / "adapter_model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
            shapes = {f.get_slice(k).get_shape()[0] for k in keys if "lora_A" in k}
    assert saved["load_in_4bit"] is True and saved["bnb_4bit_quant_type"] == quant.quant_type
    assert saved["bnb_4bit_use_double_quant"] == quant.double_quant
    assert saved["bnb_4bit_compute_dtype"] == quant.compute_dtype
    assert keys and all("lora_" in k for k in keys) and shapes == {r}


RECIPES = st.builds(
    Recipe,
    name=st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
    lora=st.builds(
        LoRAConfig,
        r=st.integers(1, 128),
        lora_alpha=st.integers(1, 256),
        lora_dropout=st.floats(0, 1),
        target_modules=TARGETS,
    ),
    training=st.builds(
        TrainingConfig,
        learning_rate=st.floats(1e-6, 1e-2),
        fp16=st.just(False),
        per_device_train_batch_size=st.integers(1, 64),
        gradient_accumulation_steps=st.integers(1, 64),
        seed=st.integers(0, 2**31),
    ),
)


# Feature: llm-fine-tuning-inference, Property 12: Training logs hyperparameters
@SETTINGS
@given(recipe=RECIPES)
def test_property_12_tracker_holds_every_hyperparameter(store, recipe):
    tracker = ExperimentTracker(store)
    expected = flatten(recipe_to_dict(recipe))
    run_id = tracker.start_run("property-12", expected, run_name=recipe.name)
    logged = tracker.client.get_run(run_id).data.params
    assert logged == {k: str(v) for k, v in expected.items()}
    tracker.end_run()


def train_with_tracking(tiny_model_dir, train_data, store, out, **kw):
    tracker = ExperimentTracker(store)
    tracker.start_run("properties-13-15", {"case": out})
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2, target_modules=["q_proj"]))
    trainer.prepare_model()
    outcome = trainer.train(train_data[0], train_data[1], quiet_training(out, **kw), tracker)
    return tracker, outcome


# Feature: llm-fine-tuning-inference, Property 13: Metrics logged at intervals
@SETTINGS
@given(interval=st.integers(1, 3), steps=st.integers(1, 6))
def test_property_13_metrics_logged_at_multiples_of_the_interval(
    tiny_model_dir, train_data, store, interval, steps
):
    with tempfile.TemporaryDirectory() as out:
        tracker, _ = train_with_tracking(
            tiny_model_dir, train_data, store, out, logging_steps=interval, max_steps=steps
        )
    history = tracker.client.get_metric_history(tracker.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(interval, steps + 1, interval))
    for name in ("learning_rate", "grad_norm"):
        assert [m.step for m in tracker.client.get_metric_history(tracker.run_id, name)] == [
            m.step for m in history
        ]
    tracker.end_run()


# Feature: llm-fine-tuning-inference, Property 14: Checkpoints linked to runs
@SETTINGS
@given(every=st.integers(1, 2), steps=st.integers(1, 3))
def test_property_14_every_checkpoint_is_an_artifact_of_its_run(
    tiny_model_dir, train_data, store, every, steps
):
    with tempfile.TemporaryDirectory() as out:
        tracker, _ = train_with_tracking(
            tiny_model_dir, train_data, store, out, save_strategy="steps", save_steps=every, max_steps=steps
        )
        local = sorted(p.name for p in Path(out).glob("checkpoint-*"))
    saved_steps = sorted(set(range(every, steps + 1, every)) | {steps})
    linked = sorted(
        a.path.split("/")[-1] for a in tracker.client.list_artifacts(tracker.run_id, "checkpoints")
    )
    assert linked == sorted(f"checkpoint-{s}" for s in saved_steps)
    assert set(local) <= set(linked)  # the ones kept locally (save_total_limit) are all linked
    names = {
        a.path.split("/")[-1]
        for a in tracker.client.list_artifacts(tracker.run_id, f"checkpoints/{linked[-1]}")
    }
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    tracker.end_run()


# Feature: llm-fine-tuning-inference, Property 15: Final metrics logged
@SETTINGS
@given(
    metrics=st.dictionaries(
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
        st.floats(-1e6, 1e6, allow_nan=False),
        min_size=1,
        max_size=6,
    ),
    status=st.sampled_from(["FINISHED", "FAILED"]),
)
def test_property_15_final_metrics_are_in_the_tracker(store, metrics, status):
    tracker = ExperimentTracker(store)
    run_id = tracker.start_run("property-15", {})
    tracker.end_run(metrics, status=status)
    run = tracker.client.get_run(run_id)
    assert run.info.status == status
    assert {k: pytest.approx(v) for k, v in run.data.metrics.items()} == {
        f"final/{k}": v for k, v in metrics.items()
    }
