"""The speed plan: what `tuneforge train` picks for the GPU in front of it (pure logic, no GPU needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.config import LoRAConfig, ModelConfig, TrainingConfig
from tuneforge.models.memory import estimate_memory
from tuneforge.models.shape import KNOWN_SHAPES, ModelShape
from tuneforge.models.speed_plan import HEADROOM, Device, plan_speed

MISTRAL = ModelShape.from_config(KNOWN_SHAPES["mistralai/Mistral-7B-Instruct-v0.3"])
LORA = LoRAConfig(r=16, lora_dropout=0.0, target_modules=["all-linear"])
MODEL = ModelConfig(name_or_path="mistralai/Mistral-7B-Instruct-v0.3")


def gpu(free_gb: float, liger: bool = True) -> Device:
    return Device("cuda", "test GPU", free_gb, liger)


def plan(free_gb=139.0, seq=2048, method="lora", liger=True, **training):
    cfg = TrainingConfig(**{"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, **training})
    return plan_speed(cfg, LORA, MODEL, seq, gpu(free_gb, liger), MISTRAL, method, "mistral")


def peak(p, seq=2048, method="lora") -> float:
    return estimate_memory(
        MISTRAL,
        method,
        LORA.r,
        LORA.target_modules,
        seq,
        p.micro_batch,
        lora_dropout=0.0,
        checkpointed_layers=p.checkpointed_layers,
        liger=p.liger,
        compiled=p.compile,
    )["peak_gb"]


def test_off_a_gpu_the_recipe_runs_as_written():
    cfg = TrainingConfig(
        per_device_train_batch_size=4, gradient_accumulation_steps=4, gradient_checkpointing=True
    )
    p = plan_speed(cfg, LORA, MODEL, 2048, Device("cpu"), MISTRAL)
    assert (p.micro_batch, p.accumulation, p.gradient_checkpointing) == (4, 4, True)
    assert (p.liger, p.compile, p.attention) == (False, False, "sdpa")
    assert "no CUDA GPU" in p.reasons[0]


def test_auto_tune_false_keeps_the_recipe_on_a_gpu():
    p = plan(auto_tune=False)
    assert (p.micro_batch, p.accumulation, p.checkpointed_layers, p.liger, p.compile) == (
        4,
        4,
        0,
        False,
        False,
    )
    assert p.attention == "varlen"  # packing on a GPU still needs a kernel that keeps examples apart
    assert any("auto_tune is off" in r for r in p.reasons)


def test_a_large_gpu_skips_checkpointing_and_takes_a_larger_micro_batch_at_the_same_effective_batch():
    p = plan(139.0)
    assert p.checkpointed_layers == 0 and p.compile and p.attention == "varlen"
    assert p.micro_batch > 4 and p.micro_batch * p.accumulation == 16
    assert peak(p) <= p.budget_gb == pytest.approx(139.0 * HEADROOM)
    assert any("same effective batch 16" in r for r in p.reasons)
    assert p.params()["speed.gradient_checkpointing"] == "off"


def test_a_small_gpu_checkpoints_the_fewest_layers_that_fit():
    p = plan(24.0)
    assert 0 < p.checkpointed_layers < MISTRAL.num_hidden_layers
    assert p.liger  # its cross-entropy saves the memory that spares recomputation
    assert peak(p) <= p.budget_gb
    one_fewer = estimate_memory(
        MISTRAL, "lora", 16, ["all-linear"], 2048, p.micro_batch, lora_dropout=0.0,
        checkpointed_layers=p.checkpointed_layers - 1, liger=True, compiled=True,
    )["peak_gb"]  # fmt: skip
    assert one_fewer > p.budget_gb
    assert f"{p.checkpointed_layers} of 32 layers" in p.describe()


def test_a_pinned_setting_is_kept():
    p = plan(139.0, gradient_checkpointing=True, liger_kernel=False, torch_compile=False)
    assert p.checkpointed_layers == 32 and not p.liger and not p.compile
    assert any("set by the recipe" in r for r in p.reasons)


def test_liger_needs_installing_and_qlora_is_not_compiled():
    p = plan(24.0, liger=False)
    assert not p.liger and any("pip install liger-kernel" in r for r in p.reasons)
    q = plan(24.0, method="qlora", use_quantization=True)
    assert not q.compile and q.liger and any("QLoRA" in r for r in q.reasons)


def test_qlora_keeps_the_recipes_micro_batch_and_checkpoints_layers_instead():
    # dequantizing every weight once per forward pass makes small micro-batches slow under QLoRA
    q = plan(40.0, method="qlora", use_quantization=True, gradient_accumulation_steps=1)
    lora = plan(40.0, gradient_accumulation_steps=1)
    assert (q.micro_batch, q.accumulation) == (4, 1)
    assert 0 < q.checkpointed_layers < MISTRAL.num_hidden_layers
    assert peak(q, method="qlora") <= q.budget_gb
    # LoRA halves its micro-batch rather than recompute anything
    assert (lora.micro_batch, lora.accumulation, lora.checkpointed_layers) == (2, 2, 0)


def test_small_models_are_not_compiled():
    tiny = ModelShape.from_config(
        {**KNOWN_SHAPES["mistralai/Mistral-7B-Instruct-v0.3"], "hidden_size": 576, "intermediate_size": 1536,
         "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3}
    )  # fmt: skip
    cfg = TrainingConfig(per_device_train_batch_size=8, gradient_accumulation_steps=1)
    p = plan_speed(cfg, LORA, MODEL, 256, gpu(139.0), tiny, "lora", "mistral")
    assert tiny.parameter_count() < 1e9 and not p.compile
    assert p.liger  # the eager layers get Liger's kernels instead
    assert any("compiling takes longer than it saves" in r for r in p.reasons)
    assert plan(139.0).compile  # a 7B model is


def test_qlora_plans_for_bf16_or_fp32_embeddings_as_configured():
    cfg = TrainingConfig(per_device_train_batch_size=4, gradient_accumulation_steps=1, use_quantization=True)
    bf16, fp32 = (
        plan_speed(cfg, LORA, MODEL, 2048, gpu(24.0), MISTRAL, "qlora", "mistral", fp32_unquantized=up)
        for up in (False, True)
    )
    assert bf16.estimated_peak_gb < fp32.estimated_peak_gb
    assert bf16.checkpointed_layers < fp32.checkpointed_layers  # the saving buys less recomputation
    assert any("kept in bf16" in r for r in bf16.reasons) and any("upcast to fp32" in r for r in fp32.reasons)


def test_liger_pinned_on_where_it_cannot_run_is_a_clear_error():
    from tuneforge.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"liger_kernel=true but liger-kernel is not installed.*pip install"
    ):
        plan(24.0, liger=False, liger_kernel=True)
    cfg = TrainingConfig(liger_kernel=True)
    with pytest.raises(ConfigError, match="liger_kernel=true needs a CUDA GPU"):
        plan_speed(cfg, LORA, MODEL, 2048, Device("cpu", liger_installed=True), MISTRAL)


def test_gpu_memory_gb_caps_what_the_plan_uses():
    p = plan(139.0, gpu_memory_gb=24.0)
    assert p.budget_gb == pytest.approx(24.0 * HEADROOM)
    assert p.checkpointed_layers > 0


def test_when_nothing_fits_it_says_so_and_keeps_the_recipes_micro_batch():
    p = plan(4.0)
    assert (p.micro_batch, p.checkpointed_layers) == (4, 32)
    assert any("does not fit" in r and "max_seq_length" in r for r in p.reasons)


@settings(max_examples=100, deadline=None)
@given(
    free=st.floats(8, 160),
    micro=st.sampled_from([1, 2, 4, 8]),
    accum=st.sampled_from([1, 2, 3, 4, 8]),
    seq=st.sampled_from([512, 1024, 2048, 4096]),
)
def test_any_plan_keeps_the_effective_batch_and_fits_its_budget_when_it_says_it_does(free, micro, accum, seq):
    cfg = TrainingConfig(per_device_train_batch_size=micro, gradient_accumulation_steps=accum)
    p = plan_speed(cfg, LORA, MODEL, seq, gpu(free), MISTRAL, "lora", "mistral")
    assert p.micro_batch * p.accumulation == micro * accum
    assert p.estimated_peak_gb == pytest.approx(peak(p, seq))
    if not any("does not fit" in r for r in p.reasons):
        assert p.estimated_peak_gb <= p.budget_gb
        if p.checkpointed_layers:  # checkpointing only when the run would not fit without it
            no_ckpt = estimate_memory(
                MISTRAL, "lora", 16, ["all-linear"], seq, p.micro_batch, lora_dropout=0.0,
                checkpointed_layers=0, liger=p.liger, compiled=p.compile,
            )["peak_gb"]  # fmt: skip
            assert no_ckpt > p.budget_gb


@pytest.mark.parametrize(("dropout", "noted"), [(0.0, False), (0.05, True), (0.1, True)])
def test_the_plan_says_what_a_lora_dropout_costs_and_keeps_it(dropout, noted):
    cfg = TrainingConfig(per_device_train_batch_size=4, gradient_accumulation_steps=4)
    lora = LoRAConfig(r=16, lora_dropout=dropout, target_modules=["all-linear"])
    p = plan_speed(cfg, lora, MODEL, 2048, gpu(139.0), MISTRAL, "lora", "mistral")
    notes = [r for r in p.reasons if r.startswith("lora_dropout")]
    assert bool(notes) == noted
    if noted:
        assert f"lora_dropout {dropout:g} as the recipe sets it" in notes[0] and "lora_dropout: 0" in notes[0]
