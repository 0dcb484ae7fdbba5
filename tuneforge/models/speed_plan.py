"""The fastest training settings for the GPU in front of the run. Pure: imports no torch.

    tuneforge train configs/mistral-7b-lora.yaml                         # the plan is printed and logged
    tuneforge train configs/mistral-7b-lora.yaml training.auto_tune=false  # the recipe exactly as written

On a CUDA GPU, `plan_speed` starts from the recipe and picks, from the pre-flight memory estimate
(tuneforge.models.memory) and the GPU's free memory:
- gradient checkpointing only when the run does not fit without it, and then on as few decoder layers as
  fit (selective checkpointing: each layer not recomputed saves about a third of its compute);
- the largest micro-batch that fits at the same effective batch (micro-batch x accumulation);
- Liger kernels (fused RMSNorm, RoPE, SwiGLU, linear cross-entropy) when installed, torch.compile of each
  decoder layer for LoRA, and variable-length attention when batches are packed.
What the recipe sets explicitly (gradient_checkpointing, liger_kernel, torch_compile,
attn_implementation other than auto) is kept. Off a GPU, or with auto_tune false, the recipe runs as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.config import LoRAConfig, ModelConfig, TrainingConfig
from tuneforge.errors import ConfigError

HEADROOM = 0.9  # share of the GPU's free memory the estimate may fill (allocator slack, estimate error)
MAX_MICRO_TOKENS = 16384  # beyond this a larger micro-batch buys little and costs memory
MIN_MICRO_TOKENS = 2048  # below this (and below the recipe's), prefer checkpointing a few layers
# below this, compiling the layers costs more than it gains (SmolLM2-135M on an H200: 0.46x the plain loop
# over 40 steps with the compile, 15-40 s of it, and not faster after it)
COMPILE_MIN_PARAMS = 1_000_000_000
# tokens/s lost to lora_dropout 0.05 (Llama-2-7B shape, r16 q,k,v,o, seq 1024 x 4, compiled layers, H200:
# 14,943 against 18,171; benchmarks/RESULTS.md)
DROPOUT_COST = 0.18
# model types Liger Kernel patches (liger_kernel.transformers.monkey_patch); checked again at load time
LIGER_MODEL_TYPES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
)


@dataclass(frozen=True)
class Device:
    """What the plan needs to know of the machine."""

    kind: str  # "cuda" or "cpu"
    name: str = ""
    free_gb: float = 0.0  # free GPU memory when the run starts (GB = 2^30 bytes)
    liger_installed: bool = False


@dataclass
class SpeedPlan:
    micro_batch: int
    accumulation: int
    checkpointed_layers: int
    num_layers: int | None
    liger: bool
    compile: bool
    attention: str
    estimated_peak_gb: float | None = None
    budget_gb: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.checkpointed_layers > 0

    def checkpointing_label(self) -> str:
        if not self.checkpointed_layers:
            return "off"
        if self.num_layers is None or self.checkpointed_layers >= self.num_layers:
            return "all layers"
        return f"{self.checkpointed_layers} of {self.num_layers} layers"

    def params(self) -> dict[str, str]:
        """MLflow params (speed.*): what was chosen."""
        out = {
            "speed.micro_batch": self.micro_batch,
            "speed.accumulation": self.accumulation,
            "speed.gradient_checkpointing": self.checkpointing_label(),
            "speed.liger_kernel": self.liger,
            "speed.torch_compile": self.compile,
            "speed.attention": self.attention,
        }
        if self.estimated_peak_gb is not None:
            out["speed.estimated_peak_gb"] = round(self.estimated_peak_gb, 2)
        if self.budget_gb is not None:
            out["speed.memory_budget_gb"] = round(self.budget_gb, 2)
        return {k: str(v) for k, v in out.items()}

    def describe(self) -> str:
        head = (
            f"speed plan: micro-batch {self.micro_batch} x accumulation {self.accumulation}, gradient "
            f"checkpointing {self.checkpointing_label()}, Liger {'on' if self.liger else 'off'}, "
            f"torch.compile {'on' if self.compile else 'off'}, attention {self.attention}"
        )
        if self.estimated_peak_gb is not None and self.budget_gb is not None:
            head += f" (estimated peak {self.estimated_peak_gb:.1f} of {self.budget_gb:.1f} GB)"
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def _attention(model: ModelConfig, training: TrainingConfig, device: Device, reasons: list[str]) -> str:
    if model.attn_implementation != "auto":
        return model.attn_implementation
    if training.packing and device.kind == "cuda":
        reasons.append("attention varlen: packed examples each attend only to themselves, no padding")
        return "varlen"
    return "sdpa"


def plan_speed(
    training: TrainingConfig,
    lora: LoRAConfig,
    model: ModelConfig,
    seq_len: int,
    device: Device,
    shape=None,
    method: str = "lora",
    model_type: str | None = None,
    fp32_unquantized: bool = True,
) -> SpeedPlan:
    """Choose the settings (see the module docstring). `shape` is a tuneforge.models.shape.ModelShape;
    without one the batch split and checkpointing stay as the recipe has them. `fp32_unquantized`: QLoRA
    upcasts embeddings, output head and norms (QuantizationConfig.keeps_fp32)."""
    if training.liger_kernel:
        if device.kind != "cuda":
            raise ConfigError(
                f"training.liger_kernel=true needs a CUDA GPU (Liger's kernels are Triton); this is a "
                f"{device.kind}: set it to null or false"
            )
        if not device.liger_installed:
            raise ConfigError(
                "training.liger_kernel=true but liger-kernel is not installed: pip install 'tuneforge[gpu]' "
                "(or liger-kernel), or set it to null"
            )
    reasons: list[str] = []
    if method == "qlora":
        reasons.append(
            "QLoRA: embeddings, output head and norms upcast to fp32 (quantization.fp32_unquantized)"
            if fp32_unquantized
            else "QLoRA: embeddings, output head and norms kept in bf16, as plain LoRA keeps them"
        )
    micro, accum = training.per_device_train_batch_size, training.gradient_accumulation_steps
    layers = shape.num_hidden_layers if shape is not None else None
    attention = _attention(model, training, device, reasons)
    if device.kind != "cuda" or not training.auto_tune:
        why = "auto_tune is off" if device.kind == "cuda" else f"no CUDA GPU ({device.kind})"
        reasons.append(f"{why}: the recipe as written")
        pinned = bool(training.gradient_checkpointing)
        return SpeedPlan(
            micro,
            accum,
            (layers or 1) if pinned else 0,
            layers,
            bool(training.liger_kernel),
            bool(training.torch_compile),
            attention,
            reasons=reasons,
        )

    liger = training.liger_kernel
    if liger is None:
        supported = model_type is None or model_type in LIGER_MODEL_TYPES
        liger = device.liger_installed and supported
        if liger:
            reasons.append("Liger's fused linear cross-entropy: no full logits in memory")
        elif not device.liger_installed:
            reasons.append("Liger kernels off: not installed (pip install liger-kernel)")
        else:
            reasons.append(f"Liger kernels off: no Liger patch for model type '{model_type}'")
    compile_ = training.torch_compile
    if compile_ is None:
        small = shape is not None and shape.parameter_count() < COMPILE_MIN_PARAMS
        compile_ = method == "lora" and not small
        if method != "lora":
            reasons.append("torch.compile off for QLoRA (4-bit matmuls break the compiled graph)")
        elif small:
            reasons.append(
                f"torch.compile off: a {shape.parameter_count() / 1e9:.2f}B-parameter model waits on kernel "
                "launches, and compiling takes longer than it saves"
            )
        else:
            reasons.append(
                "torch.compile per decoder layer (it fuses norms and SwiGLU itself: no Liger kernels there)"
            )
    if liger and not compile_:
        reasons.append("Liger's RMSNorm, RoPE and SwiGLU in the eager decoder layers")
    if lora.lora_dropout > 0:
        reasons.append(
            f"lora_dropout {lora.lora_dropout:g} as the recipe sets it: a dropout on each adapter's input "
            f"cost {DROPOUT_COST:.0%} of tokens/s on an H200 (7B, compiled layers); "
            "lora.lora_dropout: 0 is the fast path"
        )

    if shape is None:
        pinned = bool(training.gradient_checkpointing)
        reasons.append("model shape unknown: micro-batch and checkpointing as in the recipe")
        return SpeedPlan(micro, accum, 1 if pinned else 0, None, liger, compile_, attention, reasons=reasons)

    from tuneforge.models.memory import estimate_memory

    available = device.free_gb
    if training.gpu_memory_gb is not None and training.gpu_memory_gb < available:
        available = training.gpu_memory_gb
        reasons.append(f"planning for {available:g} GB (training.gpu_memory_gb), not the GPU's free memory")
    budget = available * HEADROOM

    def peak_with(liger_on: bool):
        def peak(m: int, k: int) -> float:
            return estimate_memory(
                shape,
                method,
                lora.r,
                lora.target_modules,
                seq_len,
                m,
                dtype="bfloat16",
                lora_dropout=lora.lora_dropout,
                checkpointed_layers=k,
                liger=liger_on,
                compiled=compile_,
                fp32_unquantized=fp32_unquantized,
            )["peak_gb"]

        return peak

    pinned = training.gradient_checkpointing
    # QLoRA dequantizes every weight once per forward pass, so a smaller micro-batch costs more than the
    # recomputation it saves (Llama-3-8B on an H200: 1 x 4 without checkpointing ran at 0.70x of 4 x 1 with
    # it): keep the recipe's micro-batch and checkpoint layers instead
    floor = micro * seq_len if method == "qlora" else min(micro * seq_len, MIN_MICRO_TOKENS)
    m, k, why = _fit(peak_with(liger), micro, accum, seq_len, layers, budget, pinned, floor)
    if liger and compile_ and training.liger_kernel is None:
        # compiled layers ran 4% faster without Liger's cross-entropy (benchmarks/RESULTS.md): keep it only
        # where its memory saving buys less recomputation or a larger micro-batch
        m0, k0, why0 = _fit(peak_with(False), micro, accum, seq_len, layers, budget, pinned, floor)
        if k0 <= k and m0 >= m and peak_with(False)(m0, k0) <= budget:
            liger, (m, k, why) = False, (m0, k0, why0)
            reasons[:] = [r for r in reasons if not r.startswith("Liger")]
            reasons.append(
                "Liger off: the run fits as well without its cross-entropy, which is slower compiled"
            )
    reasons.extend(why)
    effective = micro * accum
    if m != micro:
        reasons.append(
            f"micro-batch {micro} x accumulation {accum} -> {m} x {effective // m}: same effective batch "
            f"{effective}, {'larger' if m > micro else 'smaller'} steps"
        )
    peak = peak_with(liger)
    return SpeedPlan(
        m, effective // m, k, layers, liger, compile_, attention, peak(m, k), budget, reasons=reasons
    )


def _fit(
    peak,
    micro: int,
    accum: int,
    seq_len: int,
    layers: int,
    budget: float,
    pinned: bool | None,
    floor_tokens: int = MIN_MICRO_TOKENS,
):
    """(micro-batch, checkpointed layers, reasons): no checkpointing at the largest micro-batch that fits
    (same effective batch) if it holds at least `floor_tokens` tokens; else as few checkpointed layers as
    fit; else every layer at a smaller micro-batch. `peak(micro_batch, layers_checkpointed)` is the estimate
    in GB."""
    reasons: list[str] = []
    effective = micro * accum
    cap = max(MAX_MICRO_TOKENS, micro * seq_len)
    sizes = [d for d in range(effective, 0, -1) if effective % d == 0 and d * seq_len <= cap]

    def largest_fitting(k: int) -> int | None:
        return next((d for d in sizes if peak(d, k) <= budget), None)

    if pinned is not None:
        k = layers if pinned else 0
        reasons.append(f"gradient checkpointing {'on' if pinned else 'off'}: set by the recipe")
        m = largest_fitting(k)
        if m is not None:
            return m, k, reasons
    else:
        m = largest_fitting(0)
        if m is not None and m * seq_len >= floor_tokens:
            reasons.append(f"no gradient checkpointing: fits in {budget:.0f} GB without recomputing")
            return m, 0, reasons
        k = next((k for k in range(1, layers + 1) if peak(micro, k) <= budget), None)
        if k is not None:
            reasons.append(
                f"gradient checkpointing on {k} of {layers} layers: the fewest that fit in {budget:.0f} GB"
            )
            return micro, k, reasons
        m = largest_fitting(layers)
        if m is not None:
            reasons.append(f"gradient checkpointing on every layer: needed to fit {budget:.0f} GB")
            return m, layers, reasons
    k = layers if pinned is not False else 0
    reasons.append(
        f"the estimate says even micro-batch {min(sizes)} does not fit in {budget:.0f} GB; trying the "
        f"recipe's micro-batch with checkpointing {'on' if k else 'off'} (lower data.max_seq_length or use "
        "QLoRA if it runs out of memory)"
    )
    return micro, k, reasons
