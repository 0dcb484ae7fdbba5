"""The `tuneforge` command line.

    tuneforge models prepare                          # embedded default -> safetensors (once)
    tuneforge data validate data/demo/train.jsonl     # every problem, with file, line and example id
    tuneforge data prepare configs/demo-cpu.yaml      # tokenized train/validation splits
    tuneforge data stats configs/demo-cpu.yaml --show 1   # counts, lengths, an example's loss mask
    tuneforge train configs/demo-cpu.yaml             # LoRA/QLoRA, tracked in MLflow, resumable
    tuneforge export runs/demo-cpu/adapter            # merged model in the base dtype
    tuneforge compare configs/demo-cpu.yaml --adapter runs/demo-cpu/adapter   # base vs fine-tuned
    tuneforge serve smollm2-135m-instruct --adapter demo=runs/demo-cpu/adapter   # HTTP: SSE, OpenAI
    tuneforge bench --url http://127.0.0.1:8000 --concurrency 1,4,16   # latency percentiles, throughput
    tuneforge cost instance g6.xlarge --rps 2 --hours 1.5   # training and serving cost
    tuneforge estimate configs/llama3-8b-qlora.yaml       # memory, time and cost before training
    tuneforge config show configs/demo-cpu.yaml training.learning_rate=1e-4

Commands print a table for people, then one JSON line for scripts. Errors name the file, line, key or
model at fault and exit with status 2 (1 when `data validate` finds problems).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tuneforge import __version__
from tuneforge.command import parse
from tuneforge.config import EMBEDDED_MODEL
from tuneforge.errors import TuneforgeError

log = logging.getLogger("tuneforge")


def build_parser() -> argparse.ArgumentParser:
    """Each stage registers its own commands; the train command gets the cost stage's pre-flight estimate."""
    from tuneforge import config_cli
    from tuneforge.bench import cli as bench_cli
    from tuneforge.cost import cli as cost_cli
    from tuneforge.data import cli as data_cli
    from tuneforge.eval import cli as eval_cli
    from tuneforge.models import cli as models_cli
    from tuneforge.pipeline import cli as pipeline_cli
    from tuneforge.serve import cli as serve_cli
    from tuneforge.train import cli as train_cli

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        formatter_class=fmt,
        description="tuneforge: from instruction data to a production endpoint.\n\n"
        "Pipeline: data (prepare) -> train (LoRA/QLoRA) -> eval -> bench/cost -> serve.\n"
        f"The embedded default model '{EMBEDDED_MODEL}' runs here without downloads;\n"
        "any Hugging Face model folder or hub id works too (model.name_or_path=...).",
        epilog="examples:\n  tuneforge data validate data/demo/train.jsonl\n"
        "  tuneforge data prepare configs/demo-cpu.yaml data.max_seq_length=256\n"
        "  tuneforge config keys lora",
    )
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data_cli.register(sub, fmt)
    train_cli.register(sub, fmt, preflight=cost_cli.preflight)
    eval_cli.register(sub, fmt)
    models_cli.register(sub, fmt)
    config_cli.register(sub, fmt)
    serve_cli.register(sub, fmt)
    bench_cli.register(sub)
    cost_cli.register(sub)
    pipeline_cli.register(sub, fmt)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # httpx logs a line per request at INFO
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except TuneforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
