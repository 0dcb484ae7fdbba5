"""python benchmarks/train_throughput.py [--model smollm2-135m-instruct] [--variants plain+gc,ours]

tuneforge's trainer against the plain transformers + PEFT loop a user writes by hand, side by side: same
model, same examples in the same order (except that tuneforge, without a variable-length attention
kernel, batches examples of similar length together: its own method), same examples per step, LoRA
shape, AdamW and precision. Each variant runs in its own process (clean peak memory, no compiled code
shared). Tokens/s count real (non-padding) tokens; peak memory is the allocator's peak (GPU) or the
process RSS (CPU).

Variants (comma-separated; `NAME:key=value;...`):
    plain+gc / plain        the plain padded loop with / without gradient checkpointing
    ours                    `tuneforge train` as a user gets it: the speed plan picks everything
    ours:gc=on;liger=off    ours with levers pinned: gc (on/off/auto), liger, compile (on/off/auto),
                            attn (auto/sdpa/varlen), auto (on/off: the speed plan at all), qlora (on/off),
                            mem (GB the plan may use, e.g. 24 to plan for a 24 GB card), fp32 (on/off/auto:
                            QLoRA's embeddings, head and norms upcast, quantization.fp32_unquantized)

On a GPU with a 7B shape and random weights (config.json only):

    python benchmarks/train_throughput.py --model .gpu-carry/llama-2-7b-shape --random-weights \\
        --synthetic --seq 1024 --batch 4 --variants plain+gc,plain,ours
    python benchmarks/train_throughput.py ... --lengths lognormal   # lengths spread from 64 to --seq

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_VARIANTS = "plain+gc,plain,ours"
SEED = 42


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """'ours:gc=off;liger=on' -> ('ours', {'gc': 'off', 'liger': 'on'}); 'plain+gc' -> ('plain', {gc: on})."""
    name, _, rest = spec.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(";") if kv)
    if name in ("plain+gc", "plain"):
        opts.setdefault("gc", "on" if name == "plain+gc" else "off")
        name = "plain"
    if name not in ("plain", "ours"):
        raise SystemExit(f"--variants: unknown variant '{spec}' (plain, plain+gc or ours[:key=value;...])")
    ours_keys = {"gc", "liger", "compile", "attn", "auto", "qlora", "mem", "fp32"}
    allowed = {"gc"} if name == "plain" else ours_keys
    unknown = set(opts) - allowed
    if unknown:
        raise SystemExit(f"--variants: '{spec}': unknown key {', '.join(sorted(unknown))}; known: {allowed}")
    return name, opts


# --------------------------------------------------------------------------- one variant, in its process


class PeakMemory:
    """Peak memory of one run: CUDA's allocator peak, or on CPU the largest resident set sampled."""

    def __init__(self):
        import torch

        self.torch, self.cuda = torch, torch.cuda.is_available()
        self.peak, self._stop = 0, threading.Event()

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * 4096)
            time.sleep(0.02)

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak = self.torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_rows(args, tokenizer, path: str) -> list[dict]:
    """The examples every variant trains on, in order: demo data, fixed-length random tokens (--synthetic)
    or random tokens of lognormal lengths between 64 and --seq (--lengths lognormal)."""
    import random

    from transformers import AutoConfig

    need = (args.warmup + args.steps) * args.batch * args.accumulation
    rng = random.Random(0)
    vocab = min(len(tokenizer), AutoConfig.from_pretrained(path).vocab_size)  # ids the model can embed
    if args.lengths == "lognormal":
        import math

        mu = math.log(max(64, args.seq // 4))
        lengths = [min(args.seq, max(64, int(rng.lognormvariate(mu, 0.8)))) for _ in range(need)]
    elif args.synthetic:
        lengths = [args.seq] * need
    else:
        from tuneforge.config import DataConfig
        from tuneforge.data import DatasetPreprocessor

        prepared = DatasetPreprocessor(
            tokenizer, DataConfig(train_file=args.data, max_seq_length=args.seq, validation_fraction=0.0)
        ).prepare()
        rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in prepared.train]
        return [rows[i % len(rows)] for i in range(need)]
    out = []
    for n in lengths:
        ids = [rng.randrange(vocab) for _ in range(n)]
        out.append({"input_ids": ids, "labels": ids})
    return out


def load_random(path: str, dtype, attn: str = "sdpa"):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialise where it will run: 7B on the host takes minutes
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)


def plain_loop(args, path, dtype, rows, lora_cfg, gc: bool) -> dict:
    """The loop users write by hand: pad each batch, forward, backward, AdamW step."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.train.builders import build_lora_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.random_weights:
        model = load_random(path, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(SEED)  # the adapters start as tuneforge's do (prepare_model seeds the same way)
    model = get_peft_model(model, build_lora_config(lora_cfg))
    # no weight decay, as tuneforge's default (torch's AdamW defaults to 0.01)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0
    )
    model.train()
    tokens, times, losses = 0, [], []
    per_step = args.batch * args.accumulation
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        step_tokens = 0
        for micro in range(args.accumulation):
            first = step * per_step + micro * args.batch
            batch = rows[first : first + args.batch]
            width = max(len(r["input_ids"]) for r in batch)
            pad = [width - len(r["input_ids"]) for r in batch]
            ids = torch.tensor(
                [r["input_ids"] + [0] * p for r, p in zip(batch, pad, strict=True)], device=device
            )
            labels = torch.tensor(
                [r["labels"] + [-100] * p for r, p in zip(batch, pad, strict=True)], device=device
            )
            mask = torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * p for r, p in zip(batch, pad, strict=True)], device=device
            )
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / args.accumulation
            loss.backward()
            if args.record_loss:
                losses.append(loss.item()) if micro == 0 else losses.__setitem__(-1, losses[-1] + loss.item())
            step_tokens += sum(len(r["input_ids"]) for r in batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
        if step >= args.warmup:
            tokens += step_tokens
    return {
        "tokens": tokens,
        "seconds": sum(times[args.warmup :]),
        "first_step_s": times[0],
        "plan": None,
        "losses": losses,
    }


def _switch(value: str | None) -> bool | None:
    return None if value in (None, "auto") else value == "on"


def ours(args, rows, lora_cfg, opts: dict) -> dict:
    """`tuneforge train`'s trainer with the speed plan (or the levers pinned by `opts`)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from tuneforge.config import ModelConfig, QuantizationConfig, TrainingConfig
    from tuneforge.train.trainer import LoRATrainer

    class StepTimer(TrainerCallback):
        """Whole optimizer steps (collation included), timed from one step's end to the next."""

        def __init__(self):
            self.times, self.tokens, self.losses, self._last, self._seen = [], [], [], None, 0

        def on_log(self, args_, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_begin(self, args_, state, control, **kw):
            sync()
            self._last = time.perf_counter()

        def on_step_end(self, args_, state, control, **kw):
            sync()
            now = time.perf_counter()
            self.times.append(now - self._last)
            self.tokens.append(state.num_input_tokens_seen - self._seen)
            self._last, self._seen = now, state.num_input_tokens_seen

    cuda = torch.cuda.is_available()
    dtype_name = "bfloat16" if cuda else "float32"
    qlora = opts.get("qlora") == "on"
    model_ref = opts.get("saved", args.model)
    with tempfile.TemporaryDirectory(dir=_roomy_tmp()) as tmp:
        model_cfg = ModelConfig(
            name_or_path=model_ref, dtype=dtype_name, attn_implementation=opts.get("attn", "auto")
        )
        quant = QuantizationConfig(fp32_unquantized=_switch(opts.get("fp32", "auto")))
        trainer = LoRATrainer(model_ref, lora_cfg, model_cfg, quant)
        cfg = TrainingConfig(
            output_dir=str(Path(tmp) / "run"),
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=args.accumulation,
            warmup_ratio=0.0,
            lr_scheduler_type="constant",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1 if args.record_loss else 1000,
            fp16=False,
            bf16=cuda,
            packing=True,
            use_quantization=qlora,
            gradient_checkpointing=_switch(opts.get("gc", "auto")),
            liger_kernel=_switch(opts.get("liger", "auto")),
            torch_compile=_switch(opts.get("compile", "auto")),
            auto_tune=opts.get("auto", "on") == "on",
            gpu_memory_gb=float(opts["mem"]) if "mem" in opts else None,
        )
        train = Dataset.from_list(rows)
        plan = trainer.make_plan(cfg, max(len(r["input_ids"]) for r in rows))
        print(plan.describe(), file=sys.stderr)
        base = None
        if args.random_weights and not qlora:  # the same random model as the plain loop, built the same way
            trainer.load_tokenizer()
            base = load_random(args.model, torch.bfloat16 if cuda else torch.float32)
        trainer.prepare_model(qlora, plan=plan, base_model=base, seed=SEED)
        training_arguments = trainer.training_arguments

        def in_file_order(cfg_, has_eval):  # the plain loop's examples, step by step (not shuffled)
            targs = training_arguments(cfg_, has_eval)
            if targs.train_sampling_strategy == "random":
                targs.train_sampling_strategy = "sequential"
            return targs

        trainer.training_arguments = in_file_order
        timer = StepTimer()
        trainer.train(train, None, cfg, callbacks=[timer])
    w = args.warmup
    return {
        "tokens": sum(timer.tokens[w:]),
        "seconds": sum(timer.times[w:]),
        "first_step_s": timer.times[0],
        "median_step_s": statistics.median(timer.times[w:]),
        "losses": timer.losses,
        "plan": {
            "micro_batch": plan.micro_batch,
            "accumulation": plan.accumulation,
            "checkpointing": plan.checkpointing_label(),
            "liger": plan.liger,
            "compile": plan.compile,
            "attention": plan.attention,
            "estimated_peak_gb": plan.estimated_peak_gb,
        },
    }


def saved_random_model(path: str, tmp: str) -> str:
    """The random model of `path`'s shape saved as safetensors (once per machine under /dev/shm when it has
    room, so QLoRA variants share it), with the tokenizer beside it."""
    import torch
    from transformers import AutoTokenizer

    root = Path(_roomy_tmp() or tmp)
    folder = root / f"tuneforge-random-{Path(path).name}"
    if not (folder / "config.json").is_file():
        load_random(path, torch.bfloat16).save_pretrained(folder)
        AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return str(folder)


def _roomy_tmp() -> str | None:
    """/dev/shm when it can hold a 8B model in bf16 (fast to write and read back), else the default."""
    import shutil

    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30 else None


def run_one(args) -> dict:
    import torch

    from tuneforge.config import LoRAConfig
    from tuneforge.models.resolve import load_tokenizer, resolve_model

    name, opts = parse_variant(args.only)
    cuda = torch.cuda.is_available()
    path = resolve_model(args.model).path
    rows = build_rows(args, load_tokenizer(args.model), path)
    targets = args.targets.split(",")
    lora_cfg = LoRAConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=args.dropout, target_modules=targets)
    if name == "ours" and opts.get("qlora") == "on" and args.random_weights:
        # 4-bit loading goes through from_pretrained: random weights saved first, outside the measured peak
        opts["saved"] = saved_random_model(args.model, tempfile.gettempdir())
        torch.cuda.empty_cache()
    with PeakMemory() as mem:
        if name == "plain":
            dtype = torch.bfloat16 if cuda else torch.float32
            r = plain_loop(args, path, dtype, rows, lora_cfg, opts["gc"] == "on")
        else:
            r = ours(args, rows, lora_cfg, opts)
    r["peak_gb"] = mem.peak / 2**30
    r["tokens_per_s"] = r["tokens"] / r["seconds"]
    return r


# --------------------------------------------------------------------------- the driver


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(REPO / "data" / "demo" / "train.jsonl"))
    p.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})"
    )
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--batch", type=int, default=8, help="examples per micro-batch")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq", type=int, default=256, help="max sequence length")
    p.add_argument(
        "--rounds", type=int, default=1, help="runs of each variant, alternating; the best is kept"
    )
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    p.add_argument("--targets", default=",".join(MODULES), help="comma-separated modules to adapt")
    p.add_argument("--random-weights", action="store_true", help="build the model from config.json alone")
    p.add_argument("--synthetic", action="store_true", help="random tokens, every example --seq long")
    p.add_argument("--lengths", choices=("fixed", "lognormal"), default="fixed")
    p.add_argument(
        "--record-loss",
        action="store_true",
        help="log every step's training loss (both loops start from the same weights and LoRA init)",
    )
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one variant in this process
    p.add_argument("--timeout", type=int, default=900, help="seconds per variant before it counts as failed")
    args = p.parse_args()

    if args.only:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        parse_variant(v)  # fail fast on a typo
    results: dict[str, list[dict]] = {v: [] for v in variants}
    errors: dict[str, str] = {}
    for _ in range(args.rounds):
        for v in variants:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--only", v]
            try:
                done = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=args.timeout, env=os.environ
                )
            except subprocess.TimeoutExpired:
                errors[v] = f"timed out after {args.timeout} s"
                continue
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                errors[v] = " | ".join(tail)[-400:]
                print(f"variant {v} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            results[v].append(json.loads(line[len("RESULT ") :]))
            plan_lines = [x for x in done.stderr.splitlines() if x.startswith(("speed plan", "  - "))]
            print(f"{v}: {results[v][-1]['tokens_per_s']:.1f} tok/s", *plan_lines, sep="\n", file=sys.stderr)

    best = {v: max(rs, key=lambda r: r["tokens_per_s"]) for v, rs in results.items() if rs}
    device = _device_name()
    base = next((v for v in variants if v in best and v.startswith("plain")), None)
    print(
        f"model {args.model}, {args.batch} examples/micro-batch x {args.accumulation}, seq {args.seq} "
        f"({args.lengths if args.synthetic or args.lengths != 'fixed' else 'demo data'}), LoRA r{args.r} on "
        f"{args.targets}, dropout {args.dropout}, {args.steps} timed steps, {device}"
    )
    print(
        f"{'variant':<40} {'tok/s':>10} {'vs ' + (base or '-'):>14} {'peak GB':>8} {'1st step s':>10}  plan"
    )
    for v in variants:
        if v not in best:
            print(f"{v:<40} {'failed':>10}  {errors.get(v, '')}")
            continue
        r = best[v]
        ratio = r["tokens_per_s"] / best[base]["tokens_per_s"] if base else float("nan")
        plan = r.get("plan") or {}
        plan_text = (
            f"mb {plan['micro_batch']}x{plan['accumulation']}, ckpt {plan['checkpointing']}, liger "
            f"{plan['liger']}, compile {plan['compile']}, {plan['attention']}"
            if plan
            else ""
        )
        print(
            f"{v:<40} {r['tokens_per_s']:>10.1f} {ratio:>14.3f} {r['peak_gb']:>8.2f} "
            f"{r['first_step_s']:>10.1f}  {plan_text}"
        )
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "device": device,
                "model": args.model,
                "batch": args.batch,
                "accumulation": args.accumulation,
                "max_seq_length": args.seq,
                "lengths": args.lengths if args.synthetic or args.lengths != "fixed" else "demo data",
                "steps": args.steps,
                "lora": {"r": args.r, "targets": args.targets.split(","), "dropout": args.dropout},
                "random_weights": args.random_weights,
                "baseline": base,
                "results": {
                    v: {
                        "tokens_per_s": round(r["tokens_per_s"], 1),
                        "tokens": r["tokens"],
                        "ratio": round(r["tokens_per_s"] / best[base]["tokens_per_s"], 4) if base else None,
                        "peak_gb": round(r["peak_gb"], 3),
                        "first_step_s": round(r["first_step_s"], 2),
                        "plan": r.get("plan"),
                        **({"losses": [round(x, 5) for x in r["losses"]]} if args.record_loss else {}),
                    }
                    for v, r in best.items()
                },
                "errors": errors,
            }
        )
    )


def _device_name() -> str:
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    return name or f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
