"""Pre-flight estimate of a training recipe: peak GPU memory (tuneforge.models.memory), training time and
cost on each catalog instance, without loading any weights. Imports no torch.

    tuneforge estimate configs/llama3-8b-qlora.yaml

Multi-GPU: tuneforge spreads training with DDP, where every GPU holds the whole model, so an instance fits
when the peak is at most 90% of ONE GPU's memory; its GPUs multiply the throughput (linear scaling assumed).
Training time = training tokens / throughput; training tokens = dataset tokens x epochs, or
max_steps x batch x gradient accumulation x max_seq_length when max_steps is set.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.models.memory import estimate_memory
from tuneforge.models.shape import KNOWN_SHAPES, ModelShape, load_model_config

__all__ = ["KNOWN_SHAPES", "ModelShape", "estimate_memory", "estimate_recipe", "load_model_config"]
FIT_FRACTION = 0.9

# --------------------------------------------------------------------------- time and cost


def training_tokens(
    max_steps: int,
    batch_size: int,
    grad_accum: int,
    seq_len: int,
    epochs: float,
    dataset_tokens: int | None,
    dataset_source: str = "",
) -> tuple[float, str]:
    """(tokens the run processes, how that was worked out)."""
    if max_steps > 0:
        n = max_steps * batch_size * grad_accum * seq_len
        return float(n), (
            f"max_steps {max_steps} x batch {batch_size} x accumulation {grad_accum} x {seq_len} tokens "
            "(an upper bound: full-length sequences)"
        )
    if dataset_tokens is None:
        raise ConfigError(
            "the training length is set by epochs, so the estimate needs the dataset's token count: run "
            "`tuneforge data prepare RECIPE` first (it writes stats.json), or pass --tokens N"
        )
    return float(
        dataset_tokens
    ) * epochs, f"{dataset_tokens:,} dataset tokens ({dataset_source}) x {epochs:g} epochs"


def estimate_training(
    shape: ModelShape,
    memory: dict[str, Any],
    tokens: float,
    catalog,
    method: str = "lora",
    throughput_tok_s: float | None = None,
    throughput_source: str = "",
    plan_for=None,
) -> list[dict[str, Any]]:
    """For each GPU instance of the catalog: whether the run fits, hours and cost (None without a
    throughput reference for its GPU). `throughput_tok_s` (per GPU, measured) replaces the references.
    `plan_for(gpu_memory_gb)` returns the speed plan tuneforge would pick on that GPU
    (tuneforge.models.speed_plan); the row then fits by the plan's peak and says what it chose."""
    params_b = shape.parameter_count() / 1e9
    rows = []
    for inst in catalog.instances.values():
        if not inst.is_gpu:
            continue
        peak, plan = memory["peak_gb"], None
        if plan_for is not None and inst.gpu_memory_gb:
            chosen = plan_for(inst.gpu_memory_gb)
            peak = chosen.estimated_peak_gb
            plan = f"micro {chosen.micro_batch}x{chosen.accumulation}, ckpt {chosen.checkpointing_label()}"
        fits = peak <= (inst.gpu_memory_gb or 0) * FIT_FRACTION
        if throughput_tok_s is not None:
            per_gpu, basis, source = throughput_tok_s, "measured", throughput_source
        else:
            ref = catalog.training_reference(inst.gpu_family)
            if ref is None:
                per_gpu, basis, source = None, None, f"no reference throughput for {inst.gpu_family}"
            else:
                per_gpu = ref.tokens_per_s * ref.params_b / params_b
                source = (
                    f"reference {ref.tokens_per_s:,.0f} tok/s ({ref.gpu}, {ref.params_b:g}B) "
                    f"scaled to {params_b:.2f}B"
                )
                if method == "qlora":
                    per_gpu *= catalog.qlora_throughput_factor
                    source += f", x{catalog.qlora_throughput_factor} for QLoRA"
                basis = "estimated"
                if not 0.25 <= params_b / ref.params_b <= 4:
                    source += " (extrapolated far from the reference size: optimistic for small models)"
                    basis = "estimated, upper bound"  # small models are bound by per-step overhead
        hours = tokens / (per_gpu * inst.gpu_count) / 3600 if per_gpu else None
        rows.append(
            {
                "instance": inst.name,
                "provider": inst.provider,
                "gpu": f"{inst.gpu_count}x {inst.gpu}",
                "gpu_memory_gb": inst.gpu_memory_gb,
                "fits": fits,
                "peak_gb": peak,
                "plan": plan,
                "headroom_gb": (inst.gpu_memory_gb or 0) * FIT_FRACTION - peak,
                "tokens_per_s": per_gpu * inst.gpu_count if per_gpu else None,
                "hours": hours,
                "cost_usd": hours * inst.on_demand_usd_per_hour if hours is not None else None,
                "usd_per_hour": inst.on_demand_usd_per_hour,
                "basis": basis,
                "source": source,
            }
        )
    rows.sort(key=lambda r: (not r["fits"], r["cost_usd"] is None, r["cost_usd"] or 0.0))
    return rows


def estimate_recipe(
    recipe,
    catalog,
    dataset_tokens: int | None = None,
    dataset_source: str = "",
    model_config: dict[str, Any] | None = None,
    config_source: str = "",
    throughput_tok_s: float | None = None,
    throughput_source: str = "",
) -> dict[str, Any]:
    """Memory, time and cost of a tuneforge Recipe on every GPU instance of the catalog."""
    if model_config is None:
        model_config, config_source = load_model_config(recipe.model.name_or_path, recipe.model.cache_dir)
    shape = ModelShape.from_config(model_config, recipe.model.name_or_path)
    t = recipe.training
    method = "qlora" if t.use_quantization else "lora"
    dtype = (
        recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16" if t.bf16 or t.fp16 else "float32"
    )
    # the smallest footprint tuneforge can choose: every layer checkpointed and Liger's cross-entropy,
    # unless the recipe pins them off; each instance's row then shows what the speed plan picks there
    memory = estimate_memory(
        shape,
        method,
        recipe.lora.r,
        recipe.lora.target_modules,
        recipe.data.max_seq_length,
        t.per_device_train_batch_size,
        t.gradient_checkpointing is not False,
        dtype,
        recipe.quantization.double_quant,
        recipe.lora.lora_dropout,
        liger=t.liger_kernel is not False,
        fp32_unquantized=recipe.quantization.keeps_fp32(),
    )
    plan_for = None
    if t.auto_tune:
        from tuneforge.models.speed_plan import Device, plan_speed

        model_type = (model_config.get("text_config") or model_config).get("model_type")

        def plan_for(gpu_memory_gb: float):
            device = Device("cuda", free_gb=gpu_memory_gb, liger_installed=True)
            return plan_speed(
                t,
                recipe.lora,
                recipe.model,
                recipe.data.max_seq_length,
                device,
                shape,
                method,
                model_type,
                fp32_unquantized=recipe.quantization.keeps_fp32(),
            )

    tokens, tokens_how = training_tokens(
        t.max_steps,
        t.per_device_train_batch_size,
        t.gradient_accumulation_steps,
        recipe.data.max_seq_length,
        t.num_train_epochs,
        dataset_tokens,
        dataset_source,
    )
    rows = estimate_training(
        shape, memory, tokens, catalog, method, throughput_tok_s, throughput_source, plan_for
    )
    return {
        "recipe": recipe.name,
        "model": recipe.model.name_or_path,
        "model_config": config_source,
        "shape": {k: v for k, v in asdict(shape).items() if k != "name"},
        "memory": memory,
        "training_tokens": tokens,
        "training_tokens_from": tokens_how,
        "instances": rows,
        "fit_rule": (
            f"peak <= {FIT_FRACTION:.0%} of one GPU's memory (DDP keeps a full copy per GPU); with auto_tune "
            "each GPU's peak is that of the speed plan tuneforge picks there (Liger assumed installed)"
        ),
    }
