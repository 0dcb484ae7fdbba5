"""`tuneforge train` (LoRA/QLoRA, tracked, resumable) and `tuneforge export` (merged model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneforge.command import add_target, json_line, recipe_for


def cmd_train(args: argparse.Namespace) -> int:
    from tuneforge.train.workflow import is_main_process, run_training

    recipe = recipe_for(args.target, args.overrides)
    if is_main_process() and args.preflight is not None:
        args.preflight(recipe)
    outcome = run_training(recipe, resume=args.resume)
    if not is_main_process():  # under torchrun, rank 0 reports
        return 0
    m = outcome.metrics
    print(f"adapter    {outcome.adapter_dir}")
    print(
        f"steps      {outcome.global_step}"
        + (f" (stopped early: {outcome.stopped_early})" if outcome.stopped_early else "")
    )
    for key in ("train_loss", "eval_loss", "train_runtime"):
        if key in m:
            print(f"{key:<10} {m[key]:.4g}")
    if outcome.run_id:
        from tuneforge.tracking import default_tracking_uri

        uri = default_tracking_uri(recipe.tracking.tracking_uri)
        print(f"mlflow     run {outcome.run_id}; browse: mlflow ui --backend-store-uri {uri}")
    json_line(
        {
            "adapter": str(outcome.adapter_dir),
            "global_step": outcome.global_step,
            "stopped_early": outcome.stopped_early,
            "run_id": outcome.run_id,
            **m,
        }
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tuneforge.train.export import export_merged

    out = export_merged(args.adapter, args.output or Path(args.adapter).parent / "merged", args.base_model)
    print(f"merged model saved to {out}")
    json_line({"output": str(out)})
    return 0


def register(sub, fmt, preflight=None) -> None:
    """`preflight(recipe)`, when given, prints an estimate before training (the cost stage's)."""
    p = sub.add_parser(
        "train",
        formatter_class=fmt,
        help="fine-tune with LoRA or QLoRA, tracked in MLflow",
        description="Prepare the data, load the base model (4-bit with training.use_quantization=true),\n"
        "train LoRA adapters, and save the adapter to <training.output_dir>/adapter. Every\n"
        "hyperparameter, step metric, checkpoint and the final metrics go to MLflow. A run folder\n"
        "with a complete checkpoint is resumed from it (optimizer, scheduler, data order, MLflow run).",
        epilog="examples:\n  tuneforge train configs/demo-cpu.yaml\n"
        "  tuneforge train configs/llama3-8b-qlora.yaml data.train_file=my.jsonl training.max_steps=500",
    )
    add_target(p)
    p.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const="always",
        default="auto",
        help="require a checkpoint to resume from (default: resume when one exists)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const="never",
        help="start over even if the run folder has checkpoints",
    )
    p.set_defaults(func=cmd_train, preflight=preflight)

    p = sub.add_parser(
        "export",
        formatter_class=fmt,
        help="merge an adapter into its base model (base dtype, safetensors)",
        description="Merge a trained adapter into its base model and save an ordinary safetensors model\n"
        "in the base model's dtype, ready for vLLM or transformers.",
        epilog="example:\n  tuneforge export runs/demo-cpu/adapter --output runs/demo-cpu/merged",
    )
    p.add_argument("adapter", help="adapter folder (e.g. runs/demo-cpu/adapter)")
    p.add_argument("--output", help="output folder (default: next to the adapter, 'merged')")
    p.add_argument("--base-model", help="base model reference (default: the one the adapter was trained on)")
    p.set_defaults(func=cmd_export)
