"""Peak GPU memory of a LoRA/QLoRA training step, from the model shape alone. Imports no torch.

Peak memory (GB here are 2^30 bytes, as torch.cuda.max_memory_allocated reports them):
    weights      LoRA: every parameter in the model dtype (2 bytes for bf16/fp16, 4 for fp32).
                 QLoRA: the decoder's linear layers at 0.5 byte/parameter (4-bit) plus quantization
                 constants (0.0159 byte/parameter with double quantization, 0.0625 without: one fp32
                 absmax per 64 weights), everything else (embeddings, output head, norms) in bf16, or in
                 fp32 where it is upcast (quantization.fp32_unquantized; peft's k-bit preparation); plus
                 one dequantized bf16 copy of the largest weight matrix.
    adapters     LoRA A and B (r x (in + out) per adapted module) in fp32, with their gradients and two
                 AdamW moments: 16 bytes per adapter parameter.
    activations  checkpointed layers keep only their input (tokens x h in the activation dtype), and one
                 layer's activations exist again while it is recomputed; the other layers keep all of
                 theirs. tuneforge checkpoints as few layers as fit (selective checkpointing). A layer's
                 activations per token: two RMSNorm fp32 input copies (8h bytes; Liger's RMSNorm keeps a
                 bf16 copy, 4h), attention q, k, v and output (SDPA/flash: no seq x seq matrix), the MLP's
                 gate, up and SiLU outputs (3i; Liger's SwiGLU recomputes the SiLU, 2i), and for each adapted
                 module its input in the activation dtype (the Trainer's autocast casts PEFT's fp32 copy
                 down before the adapter's matmul saves it) plus a dropout mask (1 byte x in_features when
                 lora_dropout > 0). Frozen linear layers save nothing. Compiled layers (torch.compile)
                 recompute the norms and the SiLU: no norm copies, 2i.
    logits       tokens x vocab x 12 bytes: bf16 logits, their fp32 copy and log-softmax, and the
                 gradient. Calibrated on benchmarks/RESULTS.md: the vocab-49k run peaked 1.08 GB above the
                 vocab-32k one, of which 0.26 GB is embeddings, leaving ~12.5 bytes per logit. Liger's fused
                 linear cross-entropy never holds them: it works through chunks of rows (chunk = the next
                 power of two of tokens / ceil(vocab / h)), 8 bytes per logit of one chunk, plus the
                 gradient of the hidden states (4 bytes x tokens x h).
    peak         weights + adapters + stored activations + the larger of the logits and one layer's
                 recompute (when any layer is checkpointed).
Checked against tuneforge's trainer on an H200 (benchmarks/RESULTS.md, Llama-2-7B shape, seq 1024 x 4,
no checkpointing): 35.4 GB eager, 28.7 GB with Liger, 28.8 GB compiled, 27.7 GB both.
Assumptions: one sequence of max_seq_length per batch row (an upper bound with length-grouped batches),
the whole batch per step (no sequence packing savings), AdamW, no CUDA context or allocator slack (nvidia-smi
shows 0.5-2 GB more). Checked against the measured H100 runs (tests/test_cost.py).
"""

from __future__ import annotations

from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.models.shape import ModelShape

GiB = 2**30
LOGIT_BYTES = 12
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANT_CONSTANT_BYTES = {True: 1 / 64 + 4 / (64 * 256), False: 4 / 64}


def target_list(target_modules: list[str] | tuple[str, ...]) -> list[str]:
    mods = list(target_modules)
    if mods == ["all-linear"]:
        return list(ALL_LINEAR)
    unknown = [m for m in mods if m not in ALL_LINEAR]
    if unknown:
        raise ConfigError(
            f"lora.target_modules: the estimate knows {', '.join(ALL_LINEAR)} (Llama-style names), "
            f"not {', '.join(unknown)}"
        )
    return mods


def lora_parameter_count(shape: ModelShape, r: int, target_modules: list[str] | tuple[str, ...]) -> int:
    """r x (in + out) per adapted module, over every layer."""
    shapes = shape.module_shapes()
    return shape.num_hidden_layers * sum(r * sum(shapes[m]) for m in target_list(target_modules))


def _act_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def layer_activation_bytes_per_token(
    shape: ModelShape,
    target_modules,
    dtype: str = "bfloat16",
    lora_dropout: float = 0.05,
    liger: bool = False,
    compiled: bool = False,
) -> float:
    """Bytes one decoder layer keeps for the backward pass, per token (see the module docstring)."""
    act = _act_bytes(dtype)
    h, i = shape.hidden_size, shape.intermediate_size
    shapes = shape.module_shapes()
    adapter_inputs = sum(shapes[m][0] for m in target_list(target_modules))
    adapters = (act + (1 if lora_dropout > 0 else 0)) * adapter_inputs
    if compiled:  # inductor recomputes the norms and the SiLU in the backward pass
        norms, mlp = 0, 2 * i
    elif liger:
        norms, mlp = 4 * h, 2 * i
    else:
        norms, mlp = 8 * h, 3 * i
    return norms + act * (2 * shape.q_dim + 2 * shape.kv_dim) + act * mlp + adapters


def fused_cross_entropy_bytes(shape: ModelShape, tokens: int) -> float:
    """What Liger's fused linear cross-entropy holds at once: one chunk of fp32 logits and their gradient,
    and the gradient of the hidden states."""
    chunks = -(-shape.vocab_size // shape.hidden_size)
    chunk = 1 << max(0, (-(-tokens // chunks) - 1).bit_length())  # next power of two, as Liger rounds
    return min(chunk, tokens) * shape.vocab_size * 8 + tokens * shape.hidden_size * 4


def estimate_memory(
    shape: ModelShape,
    method: str = "lora",
    r: int = 16,
    target_modules: list[str] | tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    seq_len: int = 1024,
    batch_size: int = 4,
    gradient_checkpointing: bool = True,
    dtype: str = "bfloat16",
    double_quant: bool = True,
    lora_dropout: float = 0.05,
    checkpointed_layers: int | None = None,
    liger: bool = False,
    compiled: bool = False,
    fp32_unquantized: bool = True,
) -> dict[str, Any]:
    """Peak GPU memory of one training step, by part, in GB (2^30 bytes).

    `checkpointed_layers` (selective checkpointing) overrides `gradient_checkpointing`: that many decoder
    layers recompute their activations, the others keep them. `liger`: Liger's fused linear cross-entropy,
    and its RMSNorm and SwiGLU in eager layers; `compiled`: decoder layers under torch.compile.
    `fp32_unquantized` (QLoRA): embeddings, output head and norms upcast to fp32, as peft prepares them."""
    if method not in ("lora", "qlora"):
        raise ConfigError(f"method must be lora or qlora, got '{method}'")
    for name, value in (("r", r), ("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    n_layers = shape.num_hidden_layers
    if checkpointed_layers is None:
        checkpointed_layers = n_layers if gradient_checkpointing else 0
    if not 0 <= checkpointed_layers <= n_layers:
        raise ConfigError(f"checkpointed_layers must be in [0, {n_layers}], got {checkpointed_layers!r}")
    tokens = seq_len * batch_size
    act = _act_bytes(dtype)
    residual = act  # bytes per value of the residual stream, which checkpointed layers keep
    residual_extra = 0  # per token and layer
    if method == "qlora":
        act = residual = 2  # QLoRA computes in bf16/fp16 whatever the stored dtype
        if fp32_unquantized:
            # fp32 norms make the residual stream fp32: layer inputs take 4 bytes, and each layer keeps
            # fp32 copies worth about 18h bytes per token more (fitted to the H200 QLoRA runs in
            # benchmarks/RESULTS.md)
            residual, residual_extra = 4, 18 * shape.hidden_size
        largest = max(a * b for a, b in shape.module_shapes().values())
        weights = (
            shape.linear_parameter_count() * (0.5 + QUANT_CONSTANT_BYTES[double_quant])
            + shape.other_parameter_count() * (4 if fp32_unquantized else 2)
            + largest * 2
        )
    else:
        weights = shape.parameter_count() * (4 if dtype == "float32" else 2)
    n_lora = lora_parameter_count(shape, r, target_modules)
    adapters = n_lora * 16
    per_layer = tokens * (
        layer_activation_bytes_per_token(
            shape, target_modules, "float32" if act == 4 else "bfloat16", lora_dropout, liger, compiled
        )
        + residual_extra
    )
    logits = fused_cross_entropy_bytes(shape, tokens) if liger else tokens * shape.vocab_size * LOGIT_BYTES
    kept = checkpointed_layers * tokens * shape.hidden_size * residual
    stored = kept + (n_layers - checkpointed_layers) * per_layer
    transient = max(logits, per_layer) if checkpointed_layers else logits
    parts = {
        "weights": weights / GiB,
        "adapters_and_optimizer": adapters / GiB,
        "stored_activations": stored / GiB,
        "logits_or_recompute": transient / GiB,
    }
    if checkpointed_layers == n_layers:
        checkpointing = "on"
    elif checkpointed_layers == 0:
        checkpointing = "off"
    else:
        checkpointing = f"on {checkpointed_layers} of {n_layers} layers"
    return {
        "method": method,
        "parameters": shape.parameter_count(),
        "lora_parameters": n_lora,
        "tokens_per_step": tokens,
        "checkpointed_layers": checkpointed_layers,
        "liger": liger,
        "compiled": compiled,
        "parts_gb": parts,
        "peak_gb": sum(parts.values()),
        "assumptions": (
            f"{'QLoRA 4-bit' if method == 'qlora' else 'LoRA ' + dtype} weights, r={r} on "
            f"{', '.join(target_list(target_modules))}, seq {seq_len} x batch {batch_size}, gradient "
            f"checkpointing {checkpointing}, {'Liger kernels' if liger else 'no Liger'}, "
            f"{'compiled' if compiled else 'eager'} layers, AdamW; excludes "
            "CUDA context"
        ),
    }
