"""How many adapters, and of what rank, a vLLM engine makes room for. Imports no torch.

vLLM sizes its LoRA kernels and buffers for `max_loras` adapters of rank `max_lora_rank`, and a larger
reservation costs every adapter request: on an H200 (Mistral-7B shape, one rank-16 adapter on all seven
projections) room for 4 adapters of rank 64 served the adapter at 0.70x of the base model's throughput at
concurrency 64, room for 1 of rank 16 at 0.79x (benchmarks/RESULTS.md). So unless the recipe says
otherwise, an engine makes room for exactly the adapters it serves from the start, and for 4 of rank 64
only when adapters may be loaded later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tuneforge.errors import ConfigError, ModelLoadError

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
RUNTIME_LORAS, RUNTIME_RANK = 4, 64  # room kept when adapters can be loaded at runtime


def adapter_rank(folder: str | Path) -> int:
    """The largest rank in a PEFT adapter (its `r`, or a larger one from `rank_pattern`)."""
    path = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
        return max([int(cfg["r"]), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())])
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: not found; is {folder} a PEFT adapter folder?") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{path}: no readable LoRA rank 'r' ({type(e).__name__}: {e})") from None


def lora_slots(
    max_loras: int | None, max_lora_rank: int | None, adapters: Sequence[str | Path], runtime: bool
) -> tuple[int, int]:
    """(max_loras, max_lora_rank) for an engine serving `adapters` from the start, and others loaded later
    when `runtime`; None leaves a value to be sized, a number is kept (and checked against the adapters)."""
    ranks = {str(a): adapter_rank(a) for a in adapters}
    runtime = runtime or not adapters  # nothing known at start: keep room for what comes
    loras = max_loras or (max(len(adapters), RUNTIME_LORAS) if runtime else len(adapters))
    need = max(ranks.values(), default=1)
    if max_lora_rank is not None:
        if need > max_lora_rank:
            biggest = max(ranks, key=ranks.get)
            raise ConfigError(
                f"inference.max_lora_rank={max_lora_rank}, but the adapter {biggest} has rank {need}: "
                f"set inference.max_lora_rank >= {need}, or leave it unset to size it to the adapters"
            )
        return loras, max_lora_rank
    want = max(need, RUNTIME_RANK) if runtime else need
    fits = [r for r in VLLM_RANKS if r >= want]
    if not fits:
        raise ConfigError(f"adapter rank {need} is above vLLM's largest max_lora_rank ({VLLM_RANKS[-1]})")
    return loras, fits[0]


TUNED_CONFIGS = Path(__file__).parent / "lora_configs"  # <shape>/<GPU>_{SHRINK,EXPAND_*}.json
TUNED_ENV = "VLLM_TUNED_CONFIG_FOLDER"
DUAL_STREAM_ENV = "VLLM_LORA_ENABLE_DUAL_STREAM"


def tuned_kernel_folder(model_config: dict) -> Path | None:
    """The shipped LoRA kernel configs for this model's shape (hidden and MLP size), tuned by
    benchmarks/lora_kernel_tune.py: on an H200, Mistral-7B/Llama-3-8B shape, rank 16, they served an
    adapter at 0.81x of the base model at concurrency 1 instead of 0.74x. vLLM picks the file of the GPU
    in use (and keeps its defaults when there is none); other shapes keep vLLM's defaults, since vLLM would
    apply the nearest tuned shape's configs to them."""
    shape = f"h{model_config.get('hidden_size')}-i{model_config.get('intermediate_size')}-"
    found = sorted(p for p in TUNED_CONFIGS.glob(shape + "r*") if p.is_dir())
    return found[0] if found else None


def _ours(key: str, value: str | None, environ: dict) -> dict[str, str | None]:
    """Set `key` to `value` (None: unset) and mark it as ours, unless the user set it: theirs wins."""
    if environ.get(key) is not None and not environ.get("TUNEFORGE_SET_" + key):
        return {}
    return {key: value, "TUNEFORGE_SET_" + key: "1" if value is not None else None}


def kernel_config_env(model_path: str | Path, environ: dict, cuda: bool = True) -> dict[str, str | None]:
    """The environment a LoRA engine for `model_path` starts with (vLLM's engine process inherits it);
    a user's own setting of either variable is kept:

    - VLLM_TUNED_CONFIG_FOLDER: the shipped tuned kernel configs for the model's shape, or unset;
    - VLLM_LORA_ENABLE_DUAL_STREAM=1 on CUDA: the adapter's kernels run on a second stream beside the
      base model's GEMMs. On an H200 (Mistral-7B shape, rank 16 on all seven projections, tuned configs)
      the adapter then served at 0.96x of the base model at concurrency 1 and 0.92x at 64, against 0.81x
      and 0.79x without it (benchmarks/RESULTS.md, "lora_overhead"). vLLM refuses it off CUDA."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    folder = tuned_kernel_folder(config)
    return {
        **_ours(TUNED_ENV, str(folder) if folder else None, environ),
        **_ours(DUAL_STREAM_ENV, "1" if cuda else None, environ),
    }
