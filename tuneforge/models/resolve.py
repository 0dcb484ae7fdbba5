"""One place that turns a model reference into something transformers can load.

A reference is one of:
- the embedded default, `smollm2-135m-instruct` (converted once into the cache, see embedded.py);
- a local folder with a Hugging Face model (config.json plus weights) or a tokenizer;
- a hub id such as `meta-llama/Meta-Llama-3-8B-Instruct`, loaded the normal way (download, HF cache,
  HF_TOKEN, HF_HUB_OFFLINE all behave as usual).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ModelLoadError
from tuneforge.models import embedded

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = {embedded.NAME, "smollm2-135m", "embedded", "default"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: `path` is a local folder or a hub id; `kind` says which."""

    reference: str
    path: str
    kind: str  # "embedded", "local" or "hub"


def resolve_model(reference: str, cache_dir: str | None = None) -> ModelRef:
    ref = reference.strip()
    if ref.lower() in EMBEDDED_ALIASES:
        return ModelRef(reference, str(embedded.embedded_model_path(cache_dir)), "embedded")
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model '{reference}': {path} is a file; pass the folder that holds "
                "config.json and the weights"
            )
        if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise ModelLoadError(
                f"model '{reference}': folder {path} has no config.json; expected a "
                "Hugging Face model folder (config.json, weights, tokenizer files)"
            )
        return ModelRef(reference, str(path.resolve()), "local")
    if ref.startswith((".", "/", "~")) or not HUB_ID.match(ref):
        raise ModelLoadError(
            f"model '{reference}': no such folder, and not a hub id (org/name); "
            f"the embedded default is '{embedded.NAME}'"
        )
    return ModelRef(reference, ref, "hub")


def load_tokenizer(
    reference: str, cache_dir: str | None = None, revision: str = "main", trust_remote_code: bool = False
):
    """The model's tokenizer, with a pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer

    ref = resolve_model(reference, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            ref.path, revision=revision if ref.kind == "hub" else None, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # OSError for missing files or no network, ValueError for bad configs
        raise ModelLoadError(_load_failure(reference, ref, e)) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer of %s has no pad token; using its EOS token %r", reference, tokenizer.eos_token)
    return tokenizer


def _load_failure(reference: str, ref: ModelRef, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if ref.kind == "hub":
        return (
            f"cannot load model '{reference}' from the Hugging Face hub: {reason}. Check the id, your "
            "network and HF_TOKEN for gated models, or pass a local folder"
        )
    return f"cannot load model '{reference}' from {ref.path}: {reason}"


SAMPLING_KEYS = ("temperature", "top_p")


def generation_defaults(reference: str, cache_dir: str | None = None) -> dict[str, float]:
    """The sampling defaults a model ships in its generation_config.json (temperature, top_p), which
    vLLM applies when a request sets none; {} when it has none or they cannot be read offline."""
    import json

    try:
        ref = resolve_model(reference, cache_dir)
    except ModelLoadError:
        return {}
    path = Path(ref.path) / "generation_config.json"
    if ref.kind == "hub":
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref.path, "generation_config.json")
        except Exception:  # no huggingface_hub, or an id it cannot parse
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return {}
    return {k: float(config[k]) for k in SAMPLING_KEYS if isinstance(config.get(k), (int, float))}
