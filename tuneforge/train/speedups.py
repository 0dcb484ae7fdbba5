"""Apply a speed plan (tuneforge.models.speed_plan) to a model: Liger kernels, selective gradient
checkpointing, per-layer torch.compile; and read the device the plan is made for."""

from __future__ import annotations

import importlib.util
import logging
import os

from tuneforge.models.speed_plan import Device

log = logging.getLogger(__name__)


def current_device() -> Device:
    """The GPU the run will use (its free memory now), or the CPU. Under torchrun/accelerate every rank
    plans from the GPU's total memory instead, so that all ranks pick the same micro-batch."""
    import torch

    liger = importlib.util.find_spec("liger_kernel") is not None
    if not torch.cuda.is_available():
        return Device("cpu", liger_installed=liger)
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    usable = free if int(os.environ.get("WORLD_SIZE", "1")) == 1 else total
    return Device("cuda", torch.cuda.get_device_name(index), usable / 2**30, liger)


def use_expandable_segments() -> None:
    """Fewer out-of-memory errors from fragmentation when packed batches change size every step; only
    takes effect before CUDA's first allocation, and never overrides the user's own setting."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def apply_liger(model, cross_entropy_only: bool = False) -> bool:
    """Patch the model instance with Liger's kernels (transformers' own integration); False when Liger has
    no patch for this model type. `cross_entropy_only`: just the fused linear cross-entropy, for compiled
    layers, where inductor fuses norms and SwiGLU better than Liger's separate kernels (measured:
    benchmarks/RESULTS.md)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    from transformers.integrations.liger import apply_liger_kernel

    if getattr(model.config, "model_type", None) not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        log.warning(
            "Liger kernels: no patch for model type %s; training without them", model.config.model_type
        )
        return False
    only_ce = {"rope": False, "rms_norm": False, "swiglu": False, "fused_linear_cross_entropy": True}
    apply_liger_kernel(model, only_ce if cross_entropy_only else None)
    return True


def decoder_layers(model) -> list:
    """The model's decoder layers (the units transformers checkpoints and tuneforge compiles)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def limit_checkpointing(model, layers: int) -> int:
    """After gradient_checkpointing_enable: keep recomputation on the first `layers` decoder layers only
    (the others keep their activations). Returns how many layers recompute."""
    found = decoder_layers(model)
    for i, layer in enumerate(found):
        layer.gradient_checkpointing = i < layers
    return min(layers, len(found))


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place (regional compilation: one small graph reused by every
    layer, so compiling takes seconds, not minutes). Returns how many were compiled."""
    found = decoder_layers(model)
    for layer in found:
        layer.compile()
    return len(found)
