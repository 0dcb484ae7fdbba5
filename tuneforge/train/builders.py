"""Config -> training objects: PEFT's LoraConfig and the precision for the device.

Model and tokenizer loading (and QLoRA's 4-bit config) live in tuneforge.models.loading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneforge.config import LoRAConfig, TrainingConfig

log = logging.getLogger(__name__)


def build_lora_config(cfg: LoRAConfig):
    """peft.LoraConfig with the recipe's rank, alpha, dropout and target modules."""
    from peft import LoraConfig

    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        target_modules=targets,
        lora_dropout=cfg.lora_dropout,
        bias=cfg.bias,
        task_type=cfg.task_type,
    )


@dataclass(frozen=True)
class Precision:
    """Mixed precision chosen for the device: at most one of bf16/fp16."""

    device: str
    bf16: bool
    fp16: bool

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


def cpu_has_bf16() -> bool:
    """bf16 matmul instructions on this CPU (AVX512-BF16 or AMX); without them bf16 autocast is emulated
    and slower than fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_precision(cfg: TrainingConfig, device: str | None = None) -> Precision:
    """bf16 where the GPU has it (also when fp16 was asked for), fp16 on older GPUs. On CPU: fp32, or bf16
    autocast when asked for and the CPU has bf16 instructions (the demo's 40 steps on this 2-core EPYC with
    AVX512-BF16: about 5 s a step against 6); fp16 on a CPU is ignored with a warning, never an error."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        bf16 = cfg.bf16 and cpu_has_bf16()
        if cfg.bf16 and not bf16:
            log.warning("training.bf16 ignored: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so "
                        "bf16 would be slower than fp32; training in fp32")  # fmt: skip
        if cfg.fp16:
            log.warning("training.fp16 is ignored on CPU (no fp16 kernels there); training in %s",
                        "bf16" if bf16 else "fp32")  # fmt: skip
        return Precision(device, bf16=bf16, fp16=False)
    if cfg.bf16 or cfg.fp16:
        if torch.cuda.is_bf16_supported():
            return Precision(device, bf16=True, fp16=False)
        return Precision(device, bf16=False, fp16=True)
    return Precision(device, bf16=False, fp16=False)
