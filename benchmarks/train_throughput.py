"""python benchmarks/train_throughput.py [--model smollm2-135m-instruct] [--steps 10] [--batch 8]

tuneforge's trainer against a plain transformers + PEFT training loop, side by side in one process: same
model, same examples in the same order, same sequence length, batch, LoRA shape, optimizer and precision.
Reports tokens/s counting only real (non-padding) tokens, peak memory, and the ratio ours / plain.

Runs unchanged on a CUDA GPU with a 7B model (bf16 there, fp32 on CPU); `--random-weights` builds the
model from its config.json alone, for machines without the weights:

    python benchmarks/train_throughput.py --model /models/llama-2-7b-shape --random-weights \\
        --seq 1024 --batch 4 --steps 20 --gradient-checkpointing

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

from tuneforge.config import DataConfig, LoRAConfig, ModelConfig, TrainingConfig
from tuneforge.data import DatasetPreprocessor
from tuneforge.models.resolve import load_tokenizer, resolve_model
from tuneforge.train.builders import build_lora_config
from tuneforge.train.trainer import LoRATrainer

REPO = Path(__file__).resolve().parents[1]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class PeakMemory:
    """Peak memory of one run: CUDA's allocator peak, or on CPU the largest resident set sampled."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        page = 4096
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak / 2**30


def load_model(path: str, dtype, random_weights: bool, attn: str):
    if random_weights:
        config = AutoConfig.from_pretrained(path)
        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):  # initialise where it will run: 7B on the host takes minutes
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_loop(args, path, dtype, rows, lora_cfg) -> dict:
    """The loop users write by hand: pad each batch, forward, backward, AdamW step."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(path, dtype, args.random_weights, args.attn).to(device)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, build_lora_config(lora_cfg))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    tokens, seconds = 0, 0.0
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        batch = rows[step * args.batch : (step + 1) * args.batch]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor(
            [r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in batch], device=device
        )
        labels = torch.tensor(
            [r["labels"] + [-100] * (width - len(r["labels"])) for r in batch], device=device
        )
        mask = torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch], device=device
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            seconds += time.perf_counter() - start
            tokens += int(mask.sum())
    del model, optimizer
    return {"tokens": tokens, "seconds": seconds}


class StepTimer(TrainerCallback):
    """Times whole optimizer steps after the warm-up (data loading and collation included: from one step's
    end to the next) and counts the real tokens they consumed."""

    def __init__(self, warmup):
        self.warmup, self.seconds, self.tokens = warmup, 0.0, 0
        self._last = self._tokens = None

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        now = time.perf_counter()
        if state.global_step > self.warmup:
            self.seconds += now - self._last
            self.tokens += state.num_input_tokens_seen - self._tokens
        self._last, self._tokens = now, state.num_input_tokens_seen


def ours(args, model_ref, dtype_name, train, lora_cfg) -> dict:
    trainer = LoRATrainer(
        model_ref,
        lora_cfg,
        ModelConfig(name_or_path=model_ref, dtype=dtype_name, attn_implementation=args.attn),
    )
    if args.random_weights:  # same random model as the plain loop, built the same way
        path = resolve_model(model_ref).path
        trainer.load_tokenizer()
        model = load_model(path, getattr(torch, dtype_name), True, args.attn)
        model.config.use_cache = False
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        trainer.model = get_peft_model(model, build_lora_config(lora_cfg))
    else:
        trainer.prepare_model(gradient_checkpointing=args.gradient_checkpointing)
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainingConfig(
            output_dir=out,
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            warmup_ratio=0.0,
            lr_scheduler_type="constant",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1000,
            fp16=False,
            bf16=dtype_name == "bfloat16",
            packing=not args.no_packing,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        trainer.train(train, None, cfg, callbacks=[timer])
    del trainer
    return {"tokens": timer.tokens, "seconds": timer.seconds}


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(REPO / "data" / "demo" / "train.jsonl"))
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256, help="max sequence length")
    p.add_argument("--rounds", type=int, default=2, help="runs of each, alternating; the best is kept")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--targets", default=",".join(MODULES), help="comma-separated modules to adapt")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--no-packing", action="store_true", help="ours with padded batches instead of packing")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="random token sequences of exactly --seq tokens (loss on all) instead of --data",
    )
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dtype_name = "bfloat16" if cuda else "float32"
    torch.set_num_threads(torch.get_num_threads())
    path = resolve_model(args.model).path
    tokenizer = load_tokenizer(args.model)
    need = (args.warmup + args.steps) * args.batch
    if args.synthetic:
        from datasets import Dataset

        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, len(tokenizer), (need, args.seq), generator=g).tolist()
        train = Dataset.from_dict({"input_ids": ids, "labels": ids})
    else:
        prepared = DatasetPreprocessor(
            tokenizer, DataConfig(train_file=args.data, max_seq_length=args.seq, validation_fraction=0.0)
        ).prepare()
        train = prepared.train.select(range(min(need, len(prepared.train))))
        while len(train) < need:  # repeat the data for long runs
            from datasets import concatenate_datasets

            train = concatenate_datasets([train, train]).select(range(min(need, 2 * len(train))))
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train]
    targets = args.targets.split(",")
    lora_cfg = LoRAConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules=targets)

    results = {"plain": [], "ours": []}
    for _ in range(args.rounds):
        for name in ("plain", "ours"):
            with PeakMemory() as mem:
                if name == "plain":
                    r = plain_loop(args, path, getattr(torch, dtype_name), rows, lora_cfg)
                else:
                    r = ours(args, args.model, dtype_name, train, lora_cfg)
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            r["peak_gb"] = mem.gb
            results[name].append(r)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in results.items()}
    ratio = best["ours"]["tokens_per_s"] / best["plain"]["tokens_per_s"]
    device = (
        torch.cuda.get_device_name(0)
        if cuda
        else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    memory_kind = "GPU allocated" if cuda else "process RSS"
    print(
        f"model {args.model} ({dtype_name}), batch {args.batch}, max seq {args.seq}, LoRA r{args.r} on "
        f"{','.join(targets)}, {args.steps} timed steps x {args.rounds} rounds, {device}"
    )
    print(f"{'loop':<8} {'tokens/s (best)':>16} {'all rounds':>24} {'peak GB':>8}")
    for name in ("plain", "ours"):
        rounds = ", ".join(f"{r['tokens_per_s']:.0f}" for r in results[name])
        print(f"{name:<8} {best[name]['tokens_per_s']:>16.1f} {rounds:>24} {best[name]['peak_gb']:>8.2f}")
    print(f"ratio ours / plain: {ratio:.3f}  (peak memory: {memory_kind})")
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "device": device,
                "model": args.model,
                "dtype": dtype_name,
                "batch": args.batch,
                "max_seq_length": args.seq,
                "steps": args.steps,
                "packing": not args.no_packing,
                "lora_targets": targets,
                "gradient_checkpointing": args.gradient_checkpointing,
                "random_weights": args.random_weights,
                "synthetic": args.synthetic,
                "ours_tokens_per_s": round(best["ours"]["tokens_per_s"], 2),
                "plain_tokens_per_s": round(best["plain"]["tokens_per_s"], 2),
                "ratio": round(ratio, 4),
                "ours_peak_gb": round(best["ours"]["peak_gb"], 3),
                "plain_peak_gb": round(best["plain"]["peak_gb"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
