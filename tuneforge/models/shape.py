"""The shape of a decoder model from its config.json, without loading weights. Imports no torch.

Parameter count (a Llama/Mistral/Qwen-style decoder): embeddings V*h, per layer q h*(heads*d), k and v
h*(kv_heads*d) each, o (heads*d)*h, MLP 3*h*i, two norms 2h; a final norm h; an output head V*h unless
tie_word_embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, ModelLoadError
from tuneforge.models.resolve import EMBEDDED_ALIASES

# config.json values of the models the shipped recipes use, for an estimate without the hub
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=128256,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=32768,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    "meta-llama/Llama-2-7b-hf": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=11008,
        vocab_size=32000,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        hidden_size=576,
        num_hidden_layers=30,
        intermediate_size=1536,
        vocab_size=49152,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
}
KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"] = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"]  # same shape


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    name: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "") -> ModelShape:
        """From a config.json mapping (text_config of multimodal configs is used when present)."""
        cfg = config.get("text_config") or config
        need = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "num_attention_heads")
        missing = [k for k in need if not isinstance(cfg.get(k), int) or cfg.get(k) <= 0]
        if missing:
            raise ConfigError(
                f"model config {name or ''}: missing or invalid {', '.join(missing)}; the estimate needs a "
                "decoder config.json with hidden_size, num_hidden_layers, intermediate_size, vocab_size, "
                "num_attention_heads"
            )
        return cls(
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            tie_word_embeddings=bool(
                cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
            ),
            head_dim=cfg.get("head_dim"),
            name=name,
        )

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.dim_head

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.dim_head

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_parameter_count(self) -> int:
        """Parameters of the decoder layers' linear layers (what QLoRA stores in 4 bits)."""
        return self.num_hidden_layers * sum(a * b for a, b in self.module_shapes().values())

    def other_parameter_count(self) -> int:
        """Embeddings, output head and norms."""
        h = self.hidden_size
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + head + self.num_hidden_layers * 2 * h + h

    def parameter_count(self) -> int:
        return self.linear_parameter_count() + self.other_parameter_count()


def load_model_config(reference: str, cache_dir: str | None = None) -> tuple[dict[str, Any], str]:
    """(config.json mapping, where it came from): a local folder, the converted embedded default, the
    Hugging Face cache (offline), or the built-in table of the shipped recipes' models."""
    path = Path(reference).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        return json.loads(path.read_text()), str(path)
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), str(path / "config.json")
    if reference.lower() in EMBEDDED_ALIASES:
        from tuneforge.models import embedded

        converted = embedded.cache_root(cache_dir) / "models" / embedded.FOLDER / "config.json"
        if converted.is_file():
            return json.loads(converted.read_text()), str(converted)
        return dict(KNOWN_SHAPES["HuggingFaceTB/SmolLM2-135M-Instruct"]), "built-in shape of SmolLM2-135M"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(reference, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), cached
    except Exception:  # no huggingface_hub, or a reference it cannot parse
        pass
    if reference in KNOWN_SHAPES:
        return dict(KNOWN_SHAPES[reference]), f"built-in shape of {reference}"
    raise ModelLoadError(
        f"model '{reference}': no config.json found (not a local folder, not in the Hugging Face cache, not "
        "one of the built-in shapes); pass --model-config path/to/config.json"
    )
