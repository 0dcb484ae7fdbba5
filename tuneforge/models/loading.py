"""Weights and tokenizers from a ModelConfig: the one loader every stage uses (train, eval, bench).

`model.revision` reaches the weights, the tokenizer and vLLM alike (for hub ids; local folders have none).
An adapter folder written by `tuneforge train` says whether it was trained with QLoRA
(tuneforge_adapter.json); loading it quantizes the base again, as it was trained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tuneforge.config import ModelConfig, QuantizationConfig
from tuneforge.errors import ModelLoadError
from tuneforge.models.resolve import load_tokenizer, resolve_model

log = logging.getLogger(__name__)

ADAPTER_META = "tuneforge_adapter.json"  # written beside a trained adapter: base model, QLoRA settings


def tokenizer_for(model: ModelConfig, reference: str | None = None):
    """The tokenizer of `reference` (default: the recipe's model) at the recipe's revision."""
    return load_tokenizer(
        reference or model.name_or_path, model.cache_dir, model.revision, model.trust_remote_code
    )


def quantization_config(cfg: QuantizationConfig):
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


def load_base_model(model: ModelConfig, reference: str | None = None, quantization=None):
    """A causal LM (4-bit with a BitsAndBytesConfig); a failure names the reference and the reason."""
    import torch
    from transformers import AutoModelForCausalLM

    name = reference or model.name_or_path
    ref = resolve_model(name, model.cache_dir)
    attn = "sdpa" if model.attn_implementation == "auto" else model.attn_implementation
    if attn == "varlen":
        from tuneforge.models.attention import register

        register()
    kwargs: dict[str, Any] = {
        "dtype": "auto" if model.dtype == "auto" else getattr(torch, model.dtype),
        "attn_implementation": attn,
        "trust_remote_code": model.trust_remote_code,
    }
    if ref.kind == "hub":
        kwargs.update(revision=model.revision, cache_dir=model.cache_dir)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["dtype"] = quantization.bnb_4bit_compute_dtype
    try:
        return AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    except Exception as e:  # OSError, ValueError, ImportError...: transformers raises many kinds
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model '{name}' from {ref.path}: {reason}") from e


def adapter_quantization(adapter: str | Path) -> dict[str, Any] | None:
    """The QLoRA settings an adapter was trained with (None: trained on full-precision weights)."""
    path = Path(adapter) / ADAPTER_META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("quantization")
    except ValueError as e:
        raise ModelLoadError(f"adapter {adapter}: {ADAPTER_META} is not valid JSON ({e})") from None


def load_with_adapter(
    model: ModelConfig,
    adapter: str | Path,
    reference: str | None = None,
    quantization: QuantizationConfig | None = None,
    merge: bool = False,
):
    """The base model with a saved adapter applied: quantized again if it was trained with QLoRA, and merged
    into the weights with `merge` (faster generation) when it was not (merging into 4-bit weights loses
    precision)."""
    from peft import PeftModel

    quantized = adapter_quantization(adapter) is not None
    quant = quantization_config(quantization or QuantizationConfig()) if quantized else None
    base = load_base_model(model, reference, quant)
    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter))
    except (OSError, ValueError, KeyError) as e:
        name = reference or model.name_or_path
        raise ModelLoadError(f"cannot apply adapter {adapter} to '{name}': {e}") from e
    return peft_model.merge_and_unload() if merge and not quantized else peft_model
