"""`inference.profile`: what `tuneforge serve --profile latency` turns on, and why. Imports no torch.

The throughput profile (the default) serves the recipe's settings as they are. The latency profile fills
in what the recipe leaves unset with what measured fastest for one stream (benchmarks/latency_profile.py,
benchmarks/RESULTS.md "latency_profile"):

- FP8 weights by online quantization, on GPUs with FP8 tensor cores (compute capability 8.9+: Ada,
  Hopper, Blackwell): decoding one stream reads every weight once per token, and FP8 halves the bytes;
- n-gram speculative decoding (prompt lookup): drafts the next tokens from the prompt and verifies them
  in one forward pass; answers that copy from the prompt (extraction, JSON, editing) gain most, and a step
  with no match costs nothing extra at batch 1. Greedy verification keeps the output the model's own.

What it leaves alone: the KV cache dtype (FP8 KV made single-stream decoding no faster in the measurement
and costs accuracy) and anything the recipe sets explicitly. Every choice comes with the reason it was made,
which `tuneforge serve` logs and /v1/engine reports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuneforge.config import InferenceConfig

FP8_CAPABILITY = (8, 9)
LATENCY_SPECULATIVE_TOKENS = 4


@dataclass(frozen=True)
class Device:
    """What the profile needs to know about the machine: None capability means no CUDA GPU."""

    capability: tuple[int, int] | None = None
    name: str = "cpu"


def plan_inference(cfg: InferenceConfig, device: Device) -> tuple[InferenceConfig, list[str]]:
    """The settings to serve with and one reason per choice the profile made (none for throughput)."""
    if cfg.profile != "latency":
        return cfg, []
    changes: dict = {}
    reasons: list[str] = []
    if cfg.quantization is not None:
        reasons.append(f"weights: quantization={cfg.quantization} as the recipe sets it")
    elif device.capability is None:
        reasons.append("weights: as stored (FP8 needs a CUDA GPU)")
    elif device.capability >= FP8_CAPABILITY:
        changes["quantization"] = "fp8"
        reasons.append(f"weights: FP8 (online) on {device.name}: half the bytes read per generated token")
    else:
        cap = ".".join(map(str, device.capability))
        reasons.append(
            f"weights: as stored ({device.name}, compute capability {cap}, has no FP8 tensor cores)"
        )
    if cfg.speculative is None:
        changes.update(speculative="ngram", speculative_tokens=LATENCY_SPECULATIVE_TOKENS)
        reasons.append(
            f"speculative decoding: n-gram prompt lookup, {LATENCY_SPECULATIVE_TOKENS} tokens per step "
            "(answers that copy from the prompt finish in fewer steps)"
        )
    else:
        reasons.append(f"speculative decoding: {cfg.speculative} as the recipe sets it")
    return replace(cfg, **changes), reasons
