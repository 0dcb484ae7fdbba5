"""Merge an adapter into its base model and save an ordinary safetensors model, ready for vLLM.

    tuneforge export runs/demo-cpu/adapter --output runs/demo-cpu/merged

The merged model is saved in the base model's own dtype (the dtype in its config.json), not in whatever
dtype the merge happened to run in: a 14 GB bf16 model stays 14 GB, not 28 GB of fp32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tuneforge.errors import ModelLoadError
from tuneforge.models.loading import ADAPTER_META

log = logging.getLogger(__name__)


def base_dtype(model_path: str):
    """The dtype a model folder or hub id declares in its config (float32 when it declares none)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def export_merged(
    adapter_dir: str | Path,
    output_dir: str | Path,
    base_model: str | None = None,
    cache_dir: str | None = None,
) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.resolve import resolve_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter_dir} is not an adapter folder (no adapter_config.json)")
    meta_path = adapter_dir / ADAPTER_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    reference = (
        base_model
        or meta.get("base_model")
        or json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    )
    if not reference:
        raise ModelLoadError(f"{adapter_dir}: the base model is unknown; pass --base-model")
    path = resolve_model(reference, cache_dir).path
    dtype = base_dtype(path)
    if meta.get("quantization"):
        log.warning(
            "this adapter was trained on a 4-bit base (QLoRA); it is merged into the full-precision "
            "base weights (%s), the usual way to deploy QLoRA adapters",
            dtype,
        )
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(dtype)
    out = Path(output_dir)
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(
        adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else path
    ).save_pretrained(out)
    return out
