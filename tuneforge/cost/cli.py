"""`tuneforge cost` (sub-commands) and `tuneforge estimate`: what a run and an endpoint cost, and what a
recipe will need.

    tuneforge cost instance g5.xlarge --hours 3 --bench runs/bench/results.json
    tuneforge cost instance p5.48xlarge --mlflow-run-id 3f2a... --rps 12.5
    tuneforge cost instance g6.xlarge,g5.xlarge,gpu_1x_a10 --rps 2 --tok-s 300   # compare instances
    tuneforge cost gpus --bench results.json --instance c7i.large --top 8   # + estimated GPU serving costs
    tuneforge cost compare configs.yaml        # configurations: CostAnalyzer.compare_configurations
    tuneforge cost catalog                     # the catalog with dates and sources
    tuneforge estimate configs/llama3-8b-qlora.yaml --tokens 2000000

Each prints a table, then one JSON line; reports go to --out (cost.md, cost.html, cost.json). The parsers
are here; the command bodies in commands.py, their inputs in inputs.py, `estimate` in estimate_cli.py.
"""

from __future__ import annotations

import argparse
import sys

from tuneforge.cost import commands, estimate_cli
from tuneforge.cost.estimate_cli import preflight

__all__ = ["preflight", "register"]

FMT = argparse.RawDescriptionHelpFormatter


class _Parser(argparse.ArgumentParser):
    """A sub-command parser that also refuses an option given without the one it qualifies (`needs`)
    or with one it cannot go with (`excludes`), as argparse refuses mutually exclusive options."""

    needs: tuple[tuple[str, str], ...] = ()
    excludes: tuple[tuple[str, str], ...] = ()

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)

        def given(option: str) -> bool:
            value = getattr(ns, self._option_string_actions[option].dest)
            return value is not None and value is not False  # 0 is given

        for option, other in self.needs:
            if given(option) and not given(other):
                self.error(f"argument {option}: goes with {other}")
        for option, other in self.excludes:
            if given(option) and given(other):
                self.error(f"argument {option}: not allowed with argument {other}")
        return ns, rest


class _Moved(argparse.Action):
    """An option of the one-command `cost` of old: an error that names the sub-command replacing it."""

    def __init__(self, option_strings, dest, now: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.now = now

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now `tuneforge cost {self.now}` (see tuneforge cost --help)")


MOVED = {
    "--instance": "instance NAME[,NAME...]",
    "--list": "catalog",
    "--compare": "compare FILE",
    "--estimate-gpus": "gpus [--instance NAME]",
}


def _catalog(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", action="append", metavar="FILE", help="extra catalog file (repeatable)")


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/cost", help="folder for cost.md, cost.html, cost.json")


def _training(p: _Parser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--hours", type=float, help="training hours")
    g.add_argument("--mlflow-run-id", help="training hours from this tracked run (final/train_runtime)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--log-to-run", action="store_true", help="also log the costs to the --mlflow-run-id run")
    p.needs += (("--tracking-uri", "--mlflow-run-id"), ("--log-to-run", "--mlflow-run-id"))


def _serving(p: _Parser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bench", metavar="RESULTS_JSON", help="serving throughput from a tuneforge bench run")
    g.add_argument("--rps", type=float, help="serving throughput in requests/s (an estimate)")
    p.add_argument("--level", type=int, help="which load level of --bench (0-based; default: the fastest)")
    p.add_argument("--measured-on", help="override where --bench ran: cpu or gpu:<name>")
    p.add_argument("--tok-s", type=float, help="serving throughput in output tokens/s (an estimate)")
    p.needs += (("--level", "--bench"), ("--measured-on", "--bench"))
    p.excludes += (("--tok-s", "--bench"),)  # a benchmark measures both


def _custom(p: _Parser, named_by: str) -> None:
    p.add_argument("--spot", action="store_true", help="use spot prices")
    p.add_argument("--price-per-hour", type=float, help=f"price a machine of your own (named by {named_by})")
    p.add_argument("--gpu", help="with --price-per-hour: GPU model, e.g. A10-24GB")
    p.add_argument("--gpu-count", type=int, help="with --price-per-hour: number of GPUs")
    p.add_argument("--gpu-memory-gb", type=float, help="with --price-per-hour: memory per GPU")
    p.add_argument("--vcpus", type=int, help="with --price-per-hour: vCPUs")
    p.add_argument("--memory-gb", type=float, help="with --price-per-hour: host memory")
    flags = ("--gpu", "--gpu-count", "--gpu-memory-gb", "--vcpus", "--memory-gb")
    p.needs += tuple((f, "--price-per-hour") for f in flags)


def register(subparsers) -> None:
    """Add `cost` (instance, gpus, compare, catalog) and `estimate` to the `tuneforge` sub-command parsers."""
    p = subparsers.add_parser(
        "cost",
        formatter_class=FMT,
        help="training and serving cost on cloud instances, with a breakdown by resource",
        description="Training cost = hourly rate x hours (--hours, or a tracked run's duration).\n"
        "Serving cost per 1K requests = rate / (3600 x requests/s) x 1000, from a `tuneforge bench`\n"
        "results.json (measured) or --rps (estimated). Prices come from the catalog (tuneforge/cost/\n"
        "catalog.yaml, each with its date and source) plus your --catalog files.\n"
        "`cost gpus` adds ESTIMATED serving costs on the catalog's GPU instances, labelled as such:\n"
        "a vLLM throughput measured on a GPU, scaled by memory bandwidth and model size (tuneforge/cost/\n"
        "serving.py says how); a CPU benchmark is priced on CPU instances only.",
        epilog="examples:\n  tuneforge cost catalog\n"
        "  tuneforge cost instance g5.xlarge --hours 3 --bench runs/bench/results.json\n"
        "  tuneforge cost instance g6.xlarge,gpu_1x_a10,runpod-l40s --rps 2.5\n"
        "  tuneforge cost gpus --bench results.json --instance c7i.large --top 8\n"
        "  tuneforge cost compare configs.yaml\n"
        "  tuneforge cost instance my-box --price-per-hour 0.9 --gpu A10-24GB --rps 2",
    )
    sub = p.add_subparsers(dest="cost_command", metavar="SUBCOMMAND", parser_class=_Parser)

    def no_subcommand(args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=no_subcommand)
    for option, now in MOVED.items():
        p.add_argument(option, action=_Moved, now=now)

    s = sub.add_parser(
        "instance",
        formatter_class=FMT,
        help="the cost on one instance (with its breakdown by resource), or several compared",
        description="Training and serving cost on one catalog instance: hourly price, training cost,\n"
        "cost per 1K requests and per 1M output tokens, and the GPU/CPU/memory breakdown. Several\n"
        "names separated by commas: one comparison table.",
        epilog="examples:\n  tuneforge cost instance g5.xlarge --hours 3 --bench runs/bench/results.json\n"
        "  tuneforge cost instance g6.xlarge,c7i.large --rps 2 --tok-s 300\n"
        "  tuneforge cost instance my-box --price-per-hour 0.9 --gpu A10-24GB --rps 2",
    )
    s.add_argument("names", metavar="NAME[,NAME...]", help="catalog instance name(s); several to compare")
    _training(s)
    _serving(s)
    _custom(s, "NAME")
    _catalog(s)
    _out(s)
    s.set_defaults(func=commands.cmd_instance)

    s = sub.add_parser(
        "gpus",
        formatter_class=FMT,
        help="ESTIMATED serving costs on the catalog's GPU instances (and the measured one)",
        description="Estimated serving costs on the catalog's GPU instances, cheapest first, each\n"
        "labelled with how it was reached (footnotes [1], [2], ...): a vLLM throughput measured on a\n"
        "GPU, scaled by memory bandwidth and model size; never from a CPU benchmark. With --instance,\n"
        "the measured cost there first (--bench or --rps).",
        epilog="examples:\n  tuneforge cost gpus --bench runs/bench/results.json --instance c7i.large\n"
        "  tuneforge cost gpus --params-b 7.25 --concurrency 256 --top 5\n"
        "  tuneforge cost gpus --bench results.json --instance lent-h200 --price-per-hour 3.5 "
        "--gpu H200-SXM-141GB",
    )
    s.add_argument("--instance", metavar="NAME", help="the instance measured by --bench or --rps (one)")
    _serving(s)
    s.add_argument("--params-b", type=float, help="model parameters, billions (default: from --model)")
    s.add_argument("--model", help="model name (default: the benchmark's)")
    s.add_argument("--concurrency", type=int, help="requests in flight (default: the benchmark's)")
    s.add_argument("--output-len", type=float, help="output tokens per request to estimate")
    s.add_argument("--top", type=int, default=10, help="estimated rows (default 10)")
    _training(s)
    _custom(s, "--instance, else 'custom'")
    _catalog(s)
    _out(s)
    s.set_defaults(func=commands.cmd_gpus)

    s = sub.add_parser(
        "compare",
        formatter_class=FMT,
        help="compare configurations from a file",
        description="Compare configurations (instance, training hours or tokens, throughput, spot) from\n"
        "a YAML/JSON file: a list of mappings with 'instance', or a mapping with 'configs'.",
        epilog="example:\n  tuneforge cost compare configs.yaml --out runs/cost",
    )
    s.add_argument("file", metavar="FILE", help="YAML/JSON list of configurations to compare")
    _catalog(s)
    _out(s)
    s.set_defaults(func=commands.cmd_compare)

    s = sub.add_parser(
        "catalog",
        formatter_class=FMT,
        help="print the catalog",
        description="The instances of the catalog with their prices and dates (sources and notes are\n"
        "in tuneforge/cost/catalog.yaml), merged with your --catalog files.",
        epilog="example:\n  tuneforge cost catalog --catalog my-prices.yaml",
    )
    _catalog(s)
    s.set_defaults(func=commands.cmd_catalog)

    estimate_cli.register(subparsers, FMT)
