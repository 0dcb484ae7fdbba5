"""LoRATrainer: load a base model, add LoRA (or QLoRA) adapters, train them, save and reload them.

Built on transformers' Trainer and PEFT: gradient accumulation with correctly normalised loss, schedules,
evaluation, checkpoints that restore optimizer, scheduler, RNG and data order. tuneforge adds the recipe,
padding-free packing, MLflow tracking, divergence and Ctrl-C handling, checkpoint validation, and errors
that say what to change. The whole `tuneforge train` (data, tracking, resume) is train/workflow.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from tuneforge.config import (
    LoRAConfig,
    ModelConfig,
    QuantizationConfig,
    TrainingConfig,
)
from tuneforge.errors import TuneforgeError
from tuneforge.models.loading import (
    ADAPTER_META,
    load_base_model,
    load_with_adapter,
    quantization_config,
    tokenizer_for,
)
from tuneforge.models.speed_plan import SpeedPlan, plan_speed
from tuneforge.train.builders import build_lora_config, choose_precision
from tuneforge.train.checkpoints import (
    disk_full_error,
    free_bytes,
    is_disk_full,
    save_atomically,
    save_checkpoints_atomically,
)

log = logging.getLogger(__name__)
# Attention kernels with variable-length support: a packed row costs what its examples cost separately.
# With sdpa/eager, a packed row needs a block mask and attention over the whole row, which is slower
# than padding examples of similar length (measured in benchmarks/RESULTS.md).
VARLEN_ATTENTION = ("varlen", "flash_attention_2", "flash_attention_3", "flex_attention")


class TrainingError(TuneforgeError):
    """Training could not run or continue; the message says what to change."""


@dataclass
class TrainOutcome:
    adapter_dir: Path
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: str | None = None  # "divergence" or "interrupted"
    run_id: str | None = None


class LoRATrainer:
    """Load a base model, add LoRA (or QLoRA) adapters, train them, save and reload them."""

    def __init__(
        self,
        base_model_name: str,
        lora_config: LoRAConfig,
        model_config: ModelConfig | None = None,
        quantization: QuantizationConfig | None = None,
    ):
        self.reference = base_model_name
        self.lora_config = lora_config
        self.model_config = model_config or ModelConfig(name_or_path=base_model_name)
        self.quantization = quantization or QuantizationConfig()
        self.use_quantization = False
        self.model = None
        self.tokenizer = None
        self.trainer = None
        self.plan: SpeedPlan | None = None

    # ------------------------------------------------------------------ model

    def load_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = tokenizer_for(self.model_config, self.reference)
        return self.tokenizer

    def make_plan(self, cfg: TrainingConfig, seq_len: int, device=None) -> SpeedPlan:
        """The speed plan for this model on this machine (tuneforge.models.speed_plan), from the model's
        config.json alone: nothing is loaded."""
        from tuneforge.models.resolve import resolve_model
        from tuneforge.models.shape import ModelShape, load_model_config
        from tuneforge.train.speedups import current_device

        shape, model_type = None, None
        try:
            path = resolve_model(self.reference, self.model_config.cache_dir).path
            config, _ = load_model_config(path)
            shape = ModelShape.from_config(config, self.reference)
            model_type = (config.get("text_config") or config).get("model_type")
        except TuneforgeError as e:
            log.warning("speed plan without a memory estimate: %s", e)
        method = "qlora" if cfg.use_quantization else "lora"
        device = device or current_device()
        return plan_speed(
            cfg,
            self.lora_config,
            self.model_config,
            seq_len,
            device,
            shape,
            method,
            model_type,
            fp32_unquantized=self.quantization.keeps_fp32(),
        )

    def prepare_model(
        self,
        use_quantization: bool = False,
        gradient_checkpointing: bool = False,
        plan: SpeedPlan | None = None,
        base_model=None,
        seed: int | None = None,
    ):
        """Load the base model (4-bit under QLoRA) and wrap it with LoRA adapters: a PeftModel.

        A speed plan sets the attention kernel, Liger, how many layers recompute activations and per-layer
        compilation; without one, `gradient_checkpointing` alone applies. `base_model` skips loading
        (benchmarks build random weights). `seed` seeds the adapters' initialisation (the Trainer seeds only
        what comes after it), so the same recipe starts from the same adapter."""
        from peft import get_peft_model, prepare_model_for_kbit_training

        from tuneforge.train import speedups

        self.load_tokenizer()
        self.use_quantization = use_quantization
        self.plan = plan
        every_layer = 10**6  # limit_checkpointing caps it at the model's layer count
        checkpointed = (
            plan.checkpointed_layers if plan is not None else (every_layer if gradient_checkpointing else 0)
        )
        model_cfg = self.model_config
        if plan is not None and plan.attention != model_cfg.attn_implementation:
            model_cfg = replace(model_cfg, attn_implementation=plan.attention)
        if base_model is None:
            quant = quantization_config(self.quantization) if use_quantization else None
            model = load_base_model(model_cfg, self.reference, quant)
        else:
            if model_cfg.attn_implementation == "varlen":
                from tuneforge.models.attention import register

                register()
            model = base_model
            attn = model_cfg.attn_implementation
            model.set_attn_implementation("sdpa" if attn == "auto" else attn)
        if plan is not None and plan.liger:
            plan.liger = speedups.apply_liger(model, cross_entropy_only=plan.compile)
        if use_quantization and self.quantization.keeps_fp32():
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=checkpointed > 0,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif checkpointed:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        if checkpointed:
            speedups.limit_checkpointing(model, checkpointed)
        model.config.use_cache = False  # the KV cache is useless in training and wastes memory
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        self.model = get_peft_model(model, build_lora_config(self.lora_config))
        if plan is not None and plan.compile:
            speedups.compile_layers(self.model)
        log.info("%s", describe_model(self.model))
        return self.model

    # ------------------------------------------------------------------ training

    def packs(self, cfg: TrainingConfig) -> bool:
        """Whether batches are packed padding-free (needs a variable-length attention kernel)."""
        attn = getattr(self.model.config, "_attn_implementation", None) if self.model is not None else None
        return cfg.packing and attn in VARLEN_ATTENTION

    def batch_split(self, cfg: TrainingConfig) -> tuple[int, int]:
        """(micro-batch, accumulation): the plan's, else the recipe's."""
        if self.plan is not None:
            return self.plan.micro_batch, self.plan.accumulation
        return cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps

    def training_arguments(self, cfg: TrainingConfig, has_eval: bool):
        from transformers import TrainingArguments

        precision = choose_precision(cfg)
        eval_strategy = cfg.eval_strategy if has_eval else "no"
        micro, accumulation = self.batch_split(cfg)
        return TrainingArguments(
            output_dir=cfg.output_dir,
            num_train_epochs=cfg.num_train_epochs,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=micro,
            per_device_eval_batch_size=cfg.per_device_eval_batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler_type,
            warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the steps
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            bf16=precision.bf16,
            fp16=precision.fp16,
            use_cpu=precision.device == "cpu",
            logging_steps=cfg.logging_steps,
            eval_strategy=eval_strategy,
            eval_steps=cfg.eval_steps,
            save_strategy=cfg.save_strategy,
            save_steps=cfg.save_steps,
            save_total_limit=cfg.save_total_limit,
            seed=cfg.seed,
            report_to="none",  # tracking is ours (TrackingCallback), so it also works on resume
            remove_unused_columns=False,
            # without packing, batch examples of similar length together: less padding, same examples
            train_sampling_strategy="group_by_length" if cfg.packing and not self.packs(cfg) else "random",
            include_num_input_tokens_seen="non_padding",
            logging_nan_inf_filter=False,  # the default hides NaN/inf losses; divergence must see them
            disable_tqdm=False,
        )

    def collator(self, packing: bool):
        """Padding-free packing (examples concatenated, position ids restarting at each one, so attention
        never crosses examples), or ordinary padding with -100 labels on the padding."""
        from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

        if packing:  # the lengths ride along for variable-length kernels (varlen reads cu_seq_lens_q)
            return DataCollatorWithFlattening(
                return_position_ids=True, separator_id=-100, return_flash_attn_kwargs=True
            )
        return DataCollatorForSeq2Seq(self.load_tokenizer(), padding=True, label_pad_token_id=-100)

    def train(
        self,
        train_dataset,
        eval_dataset,
        training_args: TrainingConfig,
        tracker=None,
        resume_from: str | Path | None = None,
        log_checkpoints: bool = True,
        callbacks: list | None = None,
    ) -> TrainOutcome:
        """Train the adapters; returns where the final adapter is and the final metrics.

        `callbacks` are extra transformers TrainerCallbacks (tests use them to watch steps)."""
        import torch
        from transformers import Trainer

        from tuneforge.train.callbacks import (
            DivergenceCallback,
            EstimateCallback,
            InterruptCallback,
            TrackingCallback,
        )

        if self.model is None:
            plan = self.plan or self.make_plan(training_args, longest(train_dataset))
            self.prepare_model(training_args.use_quantization, plan=plan, seed=training_args.seed)
        keep = ["input_ids", "labels"]
        train_dataset = train_dataset.select_columns(keep)
        has_eval = eval_dataset is not None and len(eval_dataset) > 0
        eval_dataset = eval_dataset.select_columns(keep) if has_eval else None
        divergence = DivergenceCallback(training_args.divergence_factor, training_args.stop_on_divergence)
        interrupt = InterruptCallback()
        self.trainer = Trainer(
            model=self.model,
            args=self.training_arguments(training_args, has_eval),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=self.collator(self.packs(training_args)),
            processing_class=self.load_tokenizer(),
            callbacks=[
                TrackingCallback(tracker, log_checkpoints),
                EstimateCallback(tracker),
                divergence,
                interrupt,
                *(callbacks or []),
            ],
        )
        save_checkpoints_atomically(self.trainer)
        output_dir = Path(training_args.output_dir)
        try:
            result = self.trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except torch.OutOfMemoryError as e:
            raise TrainingError(oom_advice(training_args, self.plan)) from e
        except TrainingError:
            raise
        except Exception as e:  # a full disk outside checkpoints: logs, the history file
            if is_disk_full(e, output_dir):
                raise disk_full_error(output_dir, "training files", None, e) from e
            raise
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        if has_eval and divergence.diverged_at is None:
            metrics.update(self.final_eval_metrics())
        adapter_dir = output_dir / "adapter"
        if self.trainer.is_world_process_zero():
            free_before = free_bytes(output_dir)
            try:
                self.save_adapter(adapter_dir)
            except Exception as e:
                if is_disk_full(e, output_dir):
                    raise disk_full_error(output_dir, "the final adapter", None, e, free_before) from e
                raise
        stopped = None
        if divergence.diverged_at is not None:
            stopped = "divergence"
        elif interrupt.interrupted:
            stopped = "interrupted"
        return TrainOutcome(adapter_dir, self.trainer.state.global_step, metrics, stopped)

    def final_eval_metrics(self) -> dict[str, float]:
        """Validation metrics at the last step: reused when the Trainer just evaluated, else computed."""
        history = self.trainer.state.log_history
        last = next((h for h in reversed(history) if "eval_loss" in h), None)
        if last is None or last.get("step") != self.trainer.state.global_step:
            last = self.trainer.evaluate()
        return {k: float(v) for k, v in last.items() if k.startswith("eval_") and isinstance(v, (int, float))}

    # ------------------------------------------------------------------ adapters

    def save_adapter(self, output_path: str | Path) -> Path:
        """Adapter weights and config only (no base weights); under QLoRA also the 4-bit config. Written
        atomically: a failed save leaves the folder as it was."""

        def write(out: Path) -> None:
            self.model.save_pretrained(out)
            self.load_tokenizer().save_pretrained(out)
            meta = {"base_model": self.reference, "lora": vars(self.lora_config).copy(), "quantization": None}
            if self.use_quantization:
                quant = quantization_config(self.quantization).to_dict()
                (out / "quantization_config.json").write_text(json.dumps(quant, indent=2, default=str) + "\n")
                meta["quantization"] = quant
            (out / ADAPTER_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")

        return save_atomically(output_path, write)

    def load_adapter(self, adapter_path: str | Path):
        """The base model with a saved adapter applied (quantized again if it was trained with QLoRA)."""
        self.model = load_with_adapter(self.model_config, adapter_path, self.reference, self.quantization)
        return self.model


def describe_model(model) -> str:
    """Parameter counts and the memory that weights, gradients and AdamW state take before activations."""
    total = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in trainable)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # each trainable parameter also holds a gradient and two AdamW moments in its own dtype
    training_state = sum(3 * p.numel() * p.element_size() for p in trainable)
    return (
        f"model: {total / 1e6:.1f}M parameters ({weights / 2**30:.2f} GB of weights), {n_train / 1e6:.2f}M "
        f"trainable ({n_train / total:.2%}); gradients + optimizer state {training_state / 2**30:.3f} GB, "
        "plus activations"
    )


def longest(dataset) -> int:
    """The longest tokenized example: what one batch row can hold at most."""
    return max((len(ids) for ids in dataset["input_ids"]), default=1)


def oom_advice(cfg: TrainingConfig, plan: SpeedPlan | None = None) -> str:
    """What to lower after running out of memory, with the current values (the speed plan's, if any)."""
    micro, accum = (
        (plan.micro_batch, plan.accumulation)
        if plan
        else (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)
    )
    checkpointing = plan.gradient_checkpointing if plan else bool(cfg.gradient_checkpointing)
    tips = [
        f"training.per_device_train_batch_size={micro} (lower it and raise "
        f"training.gradient_accumulation_steps={accum} to keep the batch)",
        "data.max_seq_length (shorter sequences)",
    ]
    if plan is not None and cfg.auto_tune and plan.budget_gb is not None:
        tips.insert(0, "training.auto_tune=false (the speed plan chose these values from an estimate)")
    if not checkpointing:
        tips.append("training.gradient_checkpointing=true (currently off)")
    if not cfg.use_quantization:
        tips.append("training.use_quantization=true (QLoRA: 4-bit base weights)")
    return "out of memory during training. Lower: " + "; ".join(tips)
