"""Tiny random Llama models with a real tokenizer, for fast tests.

    from tuneforge.models.tiny import build_tiny_model
    folder = build_tiny_model("/tmp/tiny")     # 2 layers, hidden 64, the embedded default's tokenizer

The tokenizer is the embedded default's (49,152 tokens, ChatML template), extracted once from its GGUF
file into the cache, so tests exercise real tokenization and chat templates without a download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tuneforge.models import embedded


def embedded_tokenizer_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder holding only the embedded default's tokenizer (cheap: no weights converted)."""
    folder = embedded.cache_root(cache_dir) / "tokenizers" / embedded.FOLDER
    if (folder / "tokenizer_config.json").is_file():
        return folder
    from transformers import AutoTokenizer

    gguf = embedded.gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=folder.parent))
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def build_tiny_model(
    out_dir: str | os.PathLike,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Save a randomly initialised LlamaForCausalLM with the embedded tokenizer to `out_dir`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_tokenizer_path(cache_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
