"""Pre-flight estimate of a training recipe: peak GPU memory, training time and cost on each catalog
instance, without loading any weights. Imports no torch.

    tuneforge estimate configs/llama3-8b-qlora.yaml

Parameter count from the model's config.json (a Llama/Mistral/Qwen-style decoder):
    embeddings V*h, per layer q h*(heads*d), k and v h*(kv_heads*d) each, o (heads*d)*h, MLP 3*h*i,
    two norms 2h; a final norm h; an output head V*h unless tie_word_embeddings.

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

Multi-GPU: tuneforge spreads training with DDP, where every GPU holds the whole model, so an instance fits
when the peak is at most 90% of ONE GPU's memory; its GPUs multiply the throughput (linear scaling assumed).
Training time = training tokens / throughput; training tokens = dataset tokens x epochs, or
max_steps x batch x gradient accumulation x max_seq_length when max_steps is set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, ModelLoadError

GiB = 2**30
FIT_FRACTION = 0.9
LOGIT_BYTES = 12
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANT_CONSTANT_BYTES = {True: 1 / 64 + 4 / (64 * 256), False: 4 / 64}

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
EMBEDDED_ALIASES = {"smollm2-135m-instruct", "smollm2-135m", "embedded", "default"}


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


# --------------------------------------------------------------------------- time and cost


def training_tokens(
    max_steps: int,
    batch_size: int,
    grad_accum: int,
    seq_len: int,
    epochs: float,
    dataset_tokens: int | None,
    dataset_source: str = "",
) -> tuple[float, str]:
    """(tokens the run processes, how that was worked out)."""
    if max_steps > 0:
        n = max_steps * batch_size * grad_accum * seq_len
        return float(n), (
            f"max_steps {max_steps} x batch {batch_size} x accumulation {grad_accum} x {seq_len} tokens "
            "(an upper bound: full-length sequences)"
        )
    if dataset_tokens is None:
        raise ConfigError(
            "the training length is set by epochs, so the estimate needs the dataset's token count: run "
            "`tuneforge data prepare RECIPE` first (it writes stats.json), or pass --tokens N"
        )
    return float(
        dataset_tokens
    ) * epochs, f"{dataset_tokens:,} dataset tokens ({dataset_source}) x {epochs:g} epochs"


def estimate_training(
    shape: ModelShape,
    memory: dict[str, Any],
    tokens: float,
    catalog,
    method: str = "lora",
    throughput_tok_s: float | None = None,
    throughput_source: str = "",
    plan_for=None,
) -> list[dict[str, Any]]:
    """For each GPU instance of the catalog: whether the run fits, hours and cost (None without a
    throughput reference for its GPU). `throughput_tok_s` (per GPU, measured) replaces the references.
    `plan_for(gpu_memory_gb)` returns the speed plan tuneforge would pick on that GPU
    (tuneforge.train.speed); the row then fits by the plan's peak and says what it chose."""
    params_b = shape.parameter_count() / 1e9
    rows = []
    for inst in catalog.instances.values():
        if not inst.is_gpu:
            continue
        peak, plan = memory["peak_gb"], None
        if plan_for is not None and inst.gpu_memory_gb:
            chosen = plan_for(inst.gpu_memory_gb)
            peak = chosen.estimated_peak_gb
            plan = f"micro {chosen.micro_batch}x{chosen.accumulation}, ckpt {chosen.checkpointing_label()}"
        fits = peak <= (inst.gpu_memory_gb or 0) * FIT_FRACTION
        if throughput_tok_s is not None:
            per_gpu, basis, source = throughput_tok_s, "measured", throughput_source
        else:
            ref = catalog.training_reference(inst.gpu_family)
            if ref is None:
                per_gpu, basis, source = None, None, f"no reference throughput for {inst.gpu_family}"
            else:
                per_gpu = ref.tokens_per_s * ref.params_b / params_b
                source = (
                    f"reference {ref.tokens_per_s:,.0f} tok/s ({ref.gpu}, {ref.params_b:g}B) "
                    f"scaled to {params_b:.2f}B"
                )
                if method == "qlora":
                    per_gpu *= catalog.qlora_throughput_factor
                    source += f", x{catalog.qlora_throughput_factor} for QLoRA"
                basis = "estimated"
                if not 0.25 <= params_b / ref.params_b <= 4:
                    source += " (extrapolated far from the reference size: optimistic for small models)"
                    basis = "estimated, upper bound"  # small models are bound by per-step overhead
        hours = tokens / (per_gpu * inst.gpu_count) / 3600 if per_gpu else None
        rows.append(
            {
                "instance": inst.name,
                "provider": inst.provider,
                "gpu": f"{inst.gpu_count}x {inst.gpu}",
                "gpu_memory_gb": inst.gpu_memory_gb,
                "fits": fits,
                "peak_gb": peak,
                "plan": plan,
                "headroom_gb": (inst.gpu_memory_gb or 0) * FIT_FRACTION - peak,
                "tokens_per_s": per_gpu * inst.gpu_count if per_gpu else None,
                "hours": hours,
                "cost_usd": hours * inst.on_demand_usd_per_hour if hours is not None else None,
                "usd_per_hour": inst.on_demand_usd_per_hour,
                "basis": basis,
                "source": source,
            }
        )
    rows.sort(key=lambda r: (not r["fits"], r["cost_usd"] is None, r["cost_usd"] or 0.0))
    return rows


# --------------------------------------------------------------------------- model configs


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


def estimate_recipe(
    recipe,
    catalog,
    dataset_tokens: int | None = None,
    dataset_source: str = "",
    model_config: dict[str, Any] | None = None,
    config_source: str = "",
    throughput_tok_s: float | None = None,
    throughput_source: str = "",
) -> dict[str, Any]:
    """Memory, time and cost of a tuneforge Recipe on every GPU instance of the catalog."""
    if model_config is None:
        model_config, config_source = load_model_config(recipe.model.name_or_path, recipe.model.cache_dir)
    shape = ModelShape.from_config(model_config, recipe.model.name_or_path)
    t = recipe.training
    method = "qlora" if t.use_quantization else "lora"
    dtype = (
        recipe.model.dtype if recipe.model.dtype != "auto" else "bfloat16" if t.bf16 or t.fp16 else "float32"
    )
    # the smallest footprint tuneforge can choose: every layer checkpointed and Liger's cross-entropy,
    # unless the recipe pins them off; each instance's row then shows what the speed plan picks there
    memory = estimate_memory(
        shape,
        method,
        recipe.lora.r,
        recipe.lora.target_modules,
        recipe.data.max_seq_length,
        t.per_device_train_batch_size,
        t.gradient_checkpointing is not False,
        dtype,
        recipe.quantization.double_quant,
        recipe.lora.lora_dropout,
        liger=t.liger_kernel is not False,
        fp32_unquantized=recipe.quantization.keeps_fp32(),
    )
    plan_for = None
    if t.auto_tune:
        from tuneforge.train.speed import Device, plan_speed

        model_type = (model_config.get("text_config") or model_config).get("model_type")

        def plan_for(gpu_memory_gb: float):
            device = Device("cuda", free_gb=gpu_memory_gb, liger_installed=True)
            return plan_speed(
                t,
                recipe.lora,
                recipe.model,
                recipe.data.max_seq_length,
                device,
                shape,
                method,
                model_type,
                fp32_unquantized=recipe.quantization.keeps_fp32(),
            )

    tokens, tokens_how = training_tokens(
        t.max_steps,
        t.per_device_train_batch_size,
        t.gradient_accumulation_steps,
        recipe.data.max_seq_length,
        t.num_train_epochs,
        dataset_tokens,
        dataset_source,
    )
    rows = estimate_training(
        shape, memory, tokens, catalog, method, throughput_tok_s, throughput_source, plan_for
    )
    return {
        "recipe": recipe.name,
        "model": recipe.model.name_or_path,
        "model_config": config_source,
        "shape": {k: v for k, v in asdict(shape).items() if k != "name"},
        "memory": memory,
        "training_tokens": tokens,
        "training_tokens_from": tokens_how,
        "instances": rows,
        "fit_rule": (
            f"peak <= {FIT_FRACTION:.0%} of one GPU's memory (DDP keeps a full copy per GPU); with auto_tune "
            "each GPU's peak is that of the speed plan tuneforge picks there (Liger assumed installed)"
        ),
    }
