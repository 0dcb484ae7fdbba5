"""`tuneforge run RECIPE [KEY=VALUE ...]`: data -> train -> compare -> serve + bench -> cost -> report."""

from __future__ import annotations

import argparse

from tuneforge.command import add_target, json_line, recipe_for


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuneforge.pipeline.console import route_logs
    from tuneforge.pipeline.run import run_pipeline
    from tuneforge.pipeline.stages import Options
    from tuneforge.tables import duration, print_table

    recipe = recipe_for(args.target, args.overrides)
    options = Options(
        concurrency=[int(c) for c in _names(args.concurrency)],
        requests=args.requests,
        output_len=args.output_len,
        instance=args.instance,
    )
    only = _names(args.stages) if args.stages else None
    log_file = route_logs(Path(recipe.training.output_dir), getattr(args, "verbose", False))
    print(f"run folder {recipe.training.output_dir}   (logs: {log_file}; -v shows them here)", flush=True)
    done = run_pipeline(recipe, options, only, _names(args.force or ""))
    print()
    print_table([{"stage": n, "": d["status"], "time": duration(d["seconds"])} for n, d in done.items()])
    report = done.get("report", {}).get("summary", {}).get("report")
    if report:
        print(f"report     {report}")
    stages = {n: {"status": d["status"], "seconds": round(d["seconds"], 1)} for n, d in done.items()}
    json_line({"folder": recipe.training.output_dir, "report": report, "stages": stages})
    return 0


def register(sub, fmt) -> None:
    from tuneforge.pipeline.stages import NAMES

    p = sub.add_parser(
        "run",
        formatter_class=fmt,
        help="the whole pipeline, resumable: data, train, compare, serve + bench, cost, report",
        description="Runs every stage in order into the recipe's training.output_dir. Run it again and\n"
        "it skips the stages done for the same settings (checked from their outputs), resumes training\n"
        "from its last checkpoint after a crash, and re-runs what a changed recipe key affects.\n"
        f"Stages: {', '.join(NAMES)}.",
        epilog="examples:\n  tuneforge run configs/demo-cpu.yaml\n"
        "  tuneforge run configs/demo-cpu.yaml training.max_steps=80     # re-runs train and what follows\n"
        "  tuneforge run configs/demo-cpu.yaml --stages data,train",
    )
    add_target(p)
    p.add_argument("--stages", help=f"only these stages, comma-separated ({','.join(NAMES)})")
    p.add_argument("--force", help="run these stages even if done (comma-separated)")
    p.add_argument("--instance", default="c7i.large", help="catalog instance that prices the run")
    p.add_argument("--concurrency", default="1,4", help="benchmark levels (default 1,4)")
    p.add_argument("--requests", type=int, default=8, help="benchmark requests per level (default 8)")
    p.add_argument("--output-len", type=int, default=48, help="benchmark max_tokens (default 48)")
    p.set_defaults(func=cmd_run)
