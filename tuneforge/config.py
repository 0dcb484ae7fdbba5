"""The recipe's schema: one typed dataclass per section (model, data, lora, quantization, training,
tracking, eval, inference, sampling). Imports no torch.

Every field has a default and a one-line docstring (`tuneforge config keys` prints them); range checks live
in `__post_init__` and name the field. Loading a recipe (defaults < YAML < overrides) is tuneforge/recipes.py.
It is longer than the other modules because it is the one place a reader finds every setting.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from tuneforge.errors import ConfigError

EMBEDDED_MODEL = "smollm2-135m-instruct"
ATTENTION_CHOICES = ("auto", "sdpa", "eager", "varlen", "flex_attention", "flash_attention_2")
DATA_FORMATS = ("auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{name}: '{value}' is not one of {', '.join(choices)}{hint}")


def _check(name: str, ok: bool, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: must be {requirement}, got {value!r}")


# vLLM's attention backends for decoder models (AttentionBackendEnum names, 0.26 on CUDA and 0.32 on CPU)
ATTENTION_BACKENDS = ("auto", "FLASH_ATTN", "TRITON_ATTN", "FLASHINFER", "FLEX_ATTENTION", "CPU_ATTN")
# vLLM's --linear-backend values (0.26 on CUDA, 0.32 on CPU: the same list but for 0.32's b12x)
LINEAR_BACKENDS = (
    "auto", "cutlass", "flashinfer_cutlass", "flashinfer_cutedsl", "flashinfer_trtllm", "flashinfer_cudnn",
    "flashinfer_b12x", "marlin", "humming", "triton", "deep_gemm", "torch", "aiter", "machete", "fbgemm",
    "conch", "exllama", "emulation", "xpu", "xpu_woq",
)  # fmt: skip


@dataclass
class ModelConfig:
    name_or_path: str = EMBEDDED_MODEL
    """Base model: a local Hugging Face folder, a hub id, or the embedded default 'smollm2-135m-instruct'."""
    revision: str = "main"
    """Hub revision (branch, tag or commit) when name_or_path is a hub id."""
    dtype: str = "auto"
    """Weight dtype to load: auto (the checkpoint's own), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Allow model code from the hub (only for models you trust)."""
    attn_implementation: str = "auto"
    """auto (varlen for packed training on a GPU, else sdpa), sdpa, eager, varlen, flex_attention, flash_*."""
    cache_dir: str | None = None
    """Cache for the embedded default's conversion (default: $TUNEFORGE_CACHE or ~/.cache/tuneforge)."""

    def __post_init__(self):
        _check("name_or_path", bool(self.name_or_path), "a non-empty model reference", self.name_or_path)
        _check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _check_choice("attn_implementation", self.attn_implementation, ATTENTION_CHOICES)


@dataclass
class DataConfig:
    train_file: str = "data/demo/train.jsonl"
    """Training data: a .jsonl, .json, .csv or .parquet file, or a hub dataset name."""
    test_file: str | None = "data/demo/test.jsonl"
    """Held-out test data for evaluation; training never reads it."""
    format: str = "auto"
    """auto (detect), alpaca, chat, sharegpt, prompt_completion or text."""
    hub_split: str = "train"
    """Split to read when train_file is a hub dataset."""
    validation_fraction: float = 0.1
    """Share of training examples held out for validation, in [0, 0.5]."""
    split_seed: int = 42
    """Seed of the content hash that assigns each example to train or validation."""
    max_seq_length: int = 512
    """Longest tokenized example, in tokens."""
    overlong: str = "truncate"
    """What to do with longer examples: truncate (keep the first max_seq_length tokens) or drop."""
    train_on: str = "response"
    """Tokens that carry loss: response (assistant turns / completion only) or all."""
    chat_template: str = "auto"
    """auto: the tokenizer's chat template when it has one, else the plain template; tokenizer; plain."""
    on_invalid: str = "error"
    """Invalid examples: error (report every problem, then stop) or skip (drop them and report which)."""

    def __post_init__(self):
        _check("train_file", bool(self.train_file), "a file path or hub dataset name", self.train_file)
        _check_choice("format", self.format, DATA_FORMATS)
        _check(
            "validation_fraction",
            0.0 <= self.validation_fraction <= 0.5,
            "in [0, 0.5]",
            self.validation_fraction,
        )
        _check("max_seq_length", self.max_seq_length >= 8, ">= 8", self.max_seq_length)
        _check_choice("overlong", self.overlong, ("truncate", "drop"))
        _check_choice("train_on", self.train_on, ("response", "all"))
        _check_choice("chat_template", self.chat_template, ("auto", "tokenizer", "plain"))
        _check_choice("on_invalid", self.on_invalid, ("error", "skip"))


@dataclass
class LoRAConfig:
    r: int = 16
    """LoRA rank: the inner dimension of each adapter."""
    lora_alpha: int = 32
    """Scale numerator: the adapter output is multiplied by lora_alpha / r."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to adapt, or ['all-linear'] for every linear layer but the output head."""
    lora_dropout: float = 0.05
    """Dropout on the adapter input, in [0, 1]."""
    bias: str = "none"
    """Which biases train: none, all or lora_only."""
    task_type: str = "CAUSAL_LM"
    """PEFT task type; tuneforge trains causal language models."""

    def __post_init__(self):
        _check("r", self.r > 0, "> 0", self.r)
        _check("lora_alpha", self.lora_alpha > 0, "> 0", self.lora_alpha)
        _check("lora_dropout", 0.0 <= self.lora_dropout <= 1.0, "in [0, 1]", self.lora_dropout)
        mods = self.target_modules
        _check(
            "target_modules",
            bool(mods) and all(isinstance(m, str) and m for m in mods),
            "a non-empty list of module names",
            mods,
        )
        _check(
            "target_modules",
            "all-linear" not in mods or len(mods) == 1,
            "['all-linear'] alone, or a list of module names",
            mods,
        )
        _check_choice("bias", self.bias, ("none", "all", "lora_only"))
        _check_choice("task_type", self.task_type, ("CAUSAL_LM",))


@dataclass
class QuantizationConfig:
    quant_type: str = "nf4"
    """4-bit storage type for QLoRA: nf4 or fp4."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bit per weight)."""
    compute_dtype: str = "bfloat16"
    """Dtype of the matrix products on dequantized weights: bfloat16, float16 or float32."""
    quant_storage: str = "uint8"
    """Container dtype of the packed 4-bit weights; set it to the compute dtype for QLoRA with FSDP."""
    fp32_unquantized: bool | None = None
    """Upcast embeddings, output head and norms to fp32 (as peft does); null: only without bf16 compute."""
    # kept in bf16 they take 2 bytes per parameter and the residual stream stays bf16, as in plain LoRA:
    # about 4 GB less on Llama-3-8B

    def keeps_fp32(self) -> bool:
        """Whether embeddings, output head and norms are upcast to fp32 under QLoRA."""
        if self.fp32_unquantized is not None:
            return self.fp32_unquantized
        return self.compute_dtype != "bfloat16"

    def __post_init__(self):
        _check_choice("quant_type", self.quant_type, ("nf4", "fp4"))
        _check_choice("compute_dtype", self.compute_dtype, ("bfloat16", "float16", "float32"))
        _check_choice("quant_storage", self.quant_storage, ("uint8", "bfloat16", "float16", "float32"))


@dataclass
class TrainingConfig:
    output_dir: str = "runs/demo"
    """Run folder: checkpoints, the adapter and the prepared data go here."""
    num_train_epochs: float = 3.0
    """Passes over the training split (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to run; -1 means use num_train_epochs."""
    per_device_train_batch_size: int = 4
    """Micro-batch size per device."""
    per_device_eval_batch_size: int = 8
    """Batch size for validation."""
    gradient_accumulation_steps: int = 4
    """Micro-batches per optimizer step."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    lr_scheduler_type: str = "cosine"
    """Schedule after warm-up: cosine, linear or constant."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming up, in [0, 1)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    fp16: bool = True
    """Use fp16 mixed precision on GPUs without bf16; ignored on CPU."""
    bf16: bool = False
    """Use bf16 mixed precision (preferred on Ampere and newer GPUs)."""
    gradient_checkpointing: bool | None = None
    """Recompute activations to save memory; null: the fewest layers that fit on a GPU, else off."""
    packing: bool = True
    """Packing with varlen/flash attention; with sdpa/eager, batches of similar length instead."""
    auto_tune: bool = True
    """On a GPU, pick checkpointing, micro-batch and kernels for it (logged); false: the recipe as written."""
    liger_kernel: bool | None = None
    """Liger's fused kernels and linear cross-entropy; null: on a GPU when installed and where it helps."""
    gpu_memory_gb: float | None = None
    """Plan for at most this much GPU memory (GB); null: the GPU's free memory when training starts."""
    torch_compile: bool | None = None
    """torch.compile each decoder layer; null: on a GPU for LoRA, off for QLoRA."""
    logging_steps: int = 10
    """Log metrics every this many optimizer steps."""
    eval_strategy: str = "epoch"
    """When to evaluate on the validation split: no, steps or epoch."""
    eval_steps: int = 100
    """Evaluate every this many steps when eval_strategy is steps."""
    save_strategy: str = "epoch"
    """When to save checkpoints: no, steps or epoch."""
    save_steps: int = 100
    """Save every this many steps when save_strategy is steps."""
    save_total_limit: int = 3
    """Checkpoints to keep (oldest are deleted first)."""
    use_quantization: bool = False
    """QLoRA: load the base model in 4 bits (see the quantization section)."""
    seed: int = 42
    """Seed for initialisation and data order."""
    stop_on_divergence: bool = True
    """Stop cleanly (with a checkpoint) when the loss turns NaN/inf or jumps far above its running level."""
    divergence_factor: float = 10.0
    """A logged loss above this many times the running median of recent losses counts as divergence."""

    def __post_init__(self):
        _check("divergence_factor", self.divergence_factor > 1, "> 1", self.divergence_factor)
        _check(
            "gpu_memory_gb",
            self.gpu_memory_gb is None or self.gpu_memory_gb > 0,
            "> 0 or null",
            self.gpu_memory_gb,
        )
        _check("output_dir", bool(self.output_dir), "a folder path", self.output_dir)
        _check("num_train_epochs", self.num_train_epochs > 0, "> 0", self.num_train_epochs)
        _check("max_steps", self.max_steps == -1 or self.max_steps > 0, "-1 or > 0", self.max_steps)
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "eval_steps",
            "save_steps",
        ):
            _check(name, getattr(self, name) >= 1, ">= 1", getattr(self, name))
        _check("learning_rate", self.learning_rate > 0, "> 0", self.learning_rate)
        _check_choice("lr_scheduler_type", self.lr_scheduler_type, ("cosine", "linear", "constant"))
        _check("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "in [0, 1)", self.warmup_ratio)
        _check("weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay)
        _check("max_grad_norm", self.max_grad_norm >= 0, ">= 0", self.max_grad_norm)
        _check("bf16", not (self.bf16 and self.fp16), "false when fp16 is true (choose one)", self.bf16)
        _check_choice("eval_strategy", self.eval_strategy, ("no", "steps", "epoch"))
        _check_choice("save_strategy", self.save_strategy, ("no", "steps", "epoch"))
        _check("save_total_limit", self.save_total_limit >= 1, ">= 1", self.save_total_limit)


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Track runs in MLflow."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None uses $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder."""
    experiment: str = "tuneforge"
    """MLflow experiment name."""
    log_checkpoints: bool = True
    """Upload each checkpoint's adapter to the run as an artifact."""


EVAL_METRICS = (
    "exact_match",
    "contains",
    "token_f1",
    "rouge_l",
    "json_valid",
    "json_exact",
    "json_fields",
    "regex",
)


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "token_f1"])
    """exact_match, contains, token_f1, rouge_l, json_valid/_exact/_fields, regex, or 'module:fn'."""
    limit: int | None = None
    """Evaluate only the first N test cases (None: all)."""
    batch_size: int = 8
    """Prompts per generation batch, and examples per perplexity batch."""
    perplexity: bool = True
    """Also compute perplexity on the test responses (token-weighted)."""
    window: int | None = None
    """Context of each perplexity window over long plain texts; None: data.max_seq_length."""
    stride: int | None = None
    """Step between perplexity windows over long plain texts; None: half the window."""
    output_dir: str | None = None
    """Where reports go; None: <training.output_dir>/eval."""
    engine: str = "auto"
    """auto (inference.engine if set, else vLLM on CUDA and transformers on CPU), vllm or transformers."""

    def __post_init__(self):
        _check_choice("engine", self.engine, ("auto", "vllm", "transformers"))
        for name in self.metrics:
            if ":" not in name:
                _check_choice("metrics", name, EVAL_METRICS)
        _check("metrics", bool(self.metrics), "a non-empty list", self.metrics)
        _check("limit", self.limit is None or self.limit >= 1, ">= 1 or null", self.limit)
        _check("batch_size", self.batch_size >= 1, ">= 1", self.batch_size)
        _check("window", self.window is None or self.window >= 2, ">= 2 or null", self.window)
        _check("stride", self.stride is None or self.stride >= 1, ">= 1 or null", self.stride)


@dataclass
class InferenceConfig:
    model_path: str | None = None
    """Model to serve; None serves the recipe's model (merged or with its adapter)."""
    tensor_parallel_size: int = 1
    """GPUs to shard the model over (vLLM)."""
    gpu_memory_utilization: float = 0.9
    """Share of GPU memory vLLM may take for weights and KV cache, in (0, 1]."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens; None uses the model's own limit."""
    quantization: str | None = None
    """Serving quantization: None, fp8 (online; vLLM, compute capability 8.9+), bitsandbytes, awq, gptq."""
    dtype: str = "auto"
    """Serving dtype: auto, float32, bfloat16 or float16."""
    engine: str = "auto"
    """Generation engine: auto (vLLM when installed, else transformers), vllm or transformers."""
    kv_cache_gb: float | None = None
    """vLLM KV cache size in GiB; None sizes it from gpu_memory_utilization (on CPU: 1 GiB)."""
    max_loras: int | None = None
    """Adapters vLLM batches at once; None: those served from the start (4 with runtime loading)."""
    max_lora_rank: int | None = None
    """Largest adapter rank vLLM accepts; None: that of the adapters served (64 with runtime loading)."""
    quantization_bits: int = 4
    """Bits for bitsandbytes serving quantization: 4 (nf4) or 8 (transformers engine only)."""
    load_format: str = "auto"
    """vLLM weight loading: auto, or dummy (random weights of the model's shape, for benchmarks)."""
    profile: str = "throughput"
    """throughput (the settings as given) or latency (fastest single stream; engines/serving_profile.py)."""
    kv_cache_dtype: str = "auto"
    """vLLM KV cache dtype: auto (the model's) or fp8."""
    speculative: str | None = None
    """Speculative decoding (vLLM): None, or ngram (drafts from the prompt: prompt lookup)."""
    speculative_tokens: int = 4
    """Tokens drafted per step when speculative is set."""
    linear_backend: str = "auto"
    """vLLM's kernels for quantized layers: auto (vLLM's choice), marlin, machete, cutlass, triton..."""
    attention_backend: str = "auto"
    """vLLM's attention kernels: auto (vLLM's choice), FLASH_ATTN, TRITON_ATTN, FLASHINFER, FLEX_ATTENTION."""
    max_num_seqs: int | None = None
    """Requests vLLM runs at once; None: vllm serve's default for the device (1024 on an H100/H200)."""
    max_num_batched_tokens: int | None = None
    """Tokens vLLM schedules per step; None: vllm serve's default for the device (8192 on an H100/H200)."""
    stream_interval: int = 1
    """Tokens vLLM gathers into one streamed chunk: 1 sends each token; more cut the API's CPU per token."""

    def __post_init__(self):
        _check_choice("engine", self.engine, ("auto", "vllm", "transformers"))
        _check_choice("profile", self.profile, ("throughput", "latency"))
        _check_choice("kv_cache_dtype", self.kv_cache_dtype, ("auto", "fp8"))
        _check_choice("linear_backend", self.linear_backend, LINEAR_BACKENDS)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if self.speculative is not None:
            _check_choice("speculative", self.speculative, ("ngram",))
        _check(
            "speculative_tokens", 1 <= self.speculative_tokens <= 16, "in [1, 16]", self.speculative_tokens
        )
        _check(
            "kv_cache_gb", self.kv_cache_gb is None or self.kv_cache_gb > 0, "> 0 or null", self.kv_cache_gb
        )
        _check("max_loras", self.max_loras is None or self.max_loras >= 1, ">= 1 or null", self.max_loras)
        for key in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, key)
            _check(key, value is None or value >= 1, ">= 1 or null", value)
        _check("stream_interval", self.stream_interval >= 1, ">= 1", self.stream_interval)
        _check(
            "max_lora_rank",
            self.max_lora_rank is None or self.max_lora_rank >= 1,
            ">= 1 or null",
            self.max_lora_rank,
        )
        _check("quantization_bits", self.quantization_bits in (4, 8), "4 or 8", self.quantization_bits)
        _check_choice("load_format", self.load_format, ("auto", "dummy"))
        _check("tensor_parallel_size", self.tensor_parallel_size >= 1, ">= 1", self.tensor_parallel_size)
        _check(
            "gpu_memory_utilization",
            0.0 < self.gpu_memory_utilization <= 1.0,
            "in (0, 1]",
            self.gpu_memory_utilization,
        )
        _check(
            "max_model_len",
            self.max_model_len is None or self.max_model_len >= 1,
            ">= 1 or null",
            self.max_model_len,
        )
        if self.quantization is not None:
            _check_choice("quantization", self.quantization, ("fp8", "bitsandbytes", "awq", "gptq"))
        _check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))


@dataclass
class SamplingParams:
    """Generation settings: the one home of their defaults, for eval, compare, serve and bench."""

    temperature: float | None = None
    """In [0, 2], 0 greedy; null: greedy in eval/compare, the model's generation_config (else 1) in serve."""
    top_p: float | None = None
    """In (0, 1]; null: 1 in eval/compare, the model's generation_config (else 1) in serve."""
    max_tokens: int = 512
    """Most tokens to generate, >= 1 (serve: when a request sets none)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end generation (not included in the output)."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (benchmarks with fixed output lengths)."""

    def __post_init__(self):
        t, p = self.temperature, self.top_p
        _check("temperature", t is None or 0.0 <= t <= 2.0, "in [0, 2] or null", t)
        _check("top_p", p is None or 0.0 < p <= 1.0, "in (0, 1] or null", p)
        _check("max_tokens", self.max_tokens >= 1, ">= 1", self.max_tokens)
        _check(
            "stop", all(isinstance(s, str) and s for s in self.stop), "a list of non-empty strings", self.stop
        )

    def concrete(self) -> SamplingParams:
        """What an engine generates with: an unset temperature or top_p is 1 (as vLLM and OpenAI do)."""
        return replace(
            self,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
        )

    def for_comparison(self) -> SamplingParams:
        """What eval and compare generate with: greedy unless the recipe sets a temperature or top_p, so base
        and fine-tuned answers differ by the adapter, not by chance."""
        return replace(
            self,
            temperature=0.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
        )


@dataclass
class Recipe:
    name: str = "demo"
    """Run name: used for the MLflow run and default folders."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset files, format and preparation."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapter shape."""
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    """4-bit settings used when training.use_quantization is true (QLoRA)."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation, precision, checkpoints and logging."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow experiment tracking."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation metrics and limits (tuneforge eval / compare)."""
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Serving engine settings."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Default generation settings."""


SECTIONS: dict[str, type] = {k: v for k, v in typing.get_type_hints(Recipe).items() if k != "name"}
