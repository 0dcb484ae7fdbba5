"""Config -> library objects: PEFT's LoraConfig, bitsandbytes' 4-bit config, precision, the base model.

Components take what these builders return, never the recipe tree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneforge.config import LoRAConfig, ModelConfig, QuantizationConfig, TrainingConfig
from tuneforge.errors import ModelLoadError

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


def build_quantization_config(cfg: QuantizationConfig):
    """transformers.BitsAndBytesConfig for QLoRA: 4-bit storage, the recipe's type and compute dtype."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, cfg.quant_storage),
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


def choose_precision(cfg: TrainingConfig, device: str | None = None) -> Precision:
    """bf16 where the GPU has it (also when fp16 was asked for), fp16 on older GPUs, fp32 on CPU
    unless bf16 is asked for explicitly. fp16 on a CPU is ignored with a warning, never an error."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        if cfg.fp16:
            log.warning(
                "training.fp16 is ignored on CPU (no fp16 kernels there); training in %s",
                "bf16" if cfg.bf16 else "fp32",
            )
        return Precision(device, bf16=cfg.bf16, fp16=False)
    if cfg.bf16 or cfg.fp16:
        if torch.cuda.is_bf16_supported():
            return Precision(device, bf16=True, fp16=False)
        return Precision(device, bf16=False, fp16=True)
    return Precision(device, bf16=False, fp16=False)


def load_base_model(path: str, model_cfg: ModelConfig, quantization=None, reference: str | None = None):
    """Load a causal LM from a resolved path; a failure names the reference and the reason."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = "auto" if model_cfg.dtype == "auto" else getattr(torch, model_cfg.dtype)
    attn = "sdpa" if model_cfg.attn_implementation == "auto" else model_cfg.attn_implementation
    if attn == "varlen":
        from tuneforge.train.attention import register

        register()
    kwargs = {
        "dtype": dtype,
        "attn_implementation": attn,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["dtype"] = quantization.bnb_4bit_compute_dtype
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model '{reference or path}' from {path}: {reason}") from e
