"""`tuneforge estimate`: peak GPU memory, training time and cost of a recipe before running it, and the
pre-flight estimate `tuneforge train` prints. Imports no torch.

    tuneforge estimate configs/llama3-8b-qlora.yaml --tokens 2000000
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.tables import duration, print_table

log = logging.getLogger(__name__)


def preflight(recipe) -> None:
    """The pre-flight estimate (`tuneforge estimate`) in three lines; a failure never stops training."""
    from tuneforge.cost.catalog import load_catalog
    from tuneforge.cost.estimate import estimate_recipe
    from tuneforge.data.size import training_split_tokens

    try:
        tokens, source = training_split_tokens(recipe)
        est = estimate_recipe(recipe, load_catalog(), tokens, source)
    except TuneforgeError as e:  # an unknown model shape or unreadable data: advice, not a requirement
        log.warning("no pre-flight estimate: %s", e)
        return
    m = est["memory"]
    fits = [r for r in est["instances"] if r["fits"] and r["cost_usd"] is not None]
    print(f"estimate   peak GPU memory {m['peak_gb']:.1f} GB ({m['parameters'] / 1e9:.2f}B parameters)")
    if fits:
        r = fits[0]
        print(
            f"           cheapest fit: {r['instance']} ({r['gpu']}), {duration(r['hours'] * 3600)}, "
            f"${r['cost_usd']:.4g} ({r['basis']}); all: tuneforge estimate RECIPE"
        )


def cmd_estimate(args: argparse.Namespace) -> int:
    from tuneforge.cost.catalog import load_catalog
    from tuneforge.cost.estimate import estimate_recipe
    from tuneforge.cost.report import usd
    from tuneforge.data.size import training_split_tokens
    from tuneforge.recipes import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    model_config, config_source = None, ""
    if args.model_config:
        model_config = json.loads(Path(args.model_config).read_text())
        config_source = args.model_config
    tokens, tokens_source = training_split_tokens(recipe, args.tokens)
    catalog = load_catalog(args.catalog or [])
    if args.instance:
        keep = {catalog.get(n.strip()).name for n in args.instance.split(",")}
        catalog.instances = {k: v for k, v in catalog.instances.items() if k in keep}
    result = estimate_recipe(
        recipe,
        catalog,
        tokens,
        tokens_source,
        model_config,
        config_source,
        args.throughput,
        "given with --throughput" if args.throughput else "",
    )
    m = result["memory"]
    print(
        f"model    {result['model']}: {m['parameters'] / 1e9:.2f}B parameters, "
        f"{m['lora_parameters'] / 1e6:.1f}M LoRA ({result['model_config']})"
    )
    print(
        f"memory   {m['peak_gb']:.1f} GB peak: " + ", ".join(f"{k} {v:.2f}" for k, v in m["parts_gb"].items())
    )
    print(f"         {m['assumptions']}")
    print(f"tokens   {result['training_tokens']:,.0f} ({result['training_tokens_from']})")
    rows = [
        {
            "instance": r["instance"],
            "GPU": r["gpu"],
            "fits": "yes" if r["fits"] else "no",
            "peak GB": f"{r['peak_gb']:.1f}",
            "plan": r["plan"] or "-",
            "tok/s": f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-",
            "time": duration(r["hours"] * 3600) if r["hours"] is not None else "-",
            "cost": usd(r["cost_usd"]) if r["cost_usd"] is not None else "-",
            "basis": r["basis"] or "-",
        }
        for r in result["instances"][: args.top]
    ]
    print_table(rows)
    print(f"fit rule: {result['fit_rule']}; throughputs are references unless --throughput is given")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "estimate.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    cheapest = next((r for r in result["instances"] if r["fits"] and r["cost_usd"] is not None), None)
    print(
        json.dumps(
            {
                "recipe": result["recipe"],
                "model": result["model"],
                "peak_memory_gb": m["peak_gb"],
                "memory_parts_gb": m["parts_gb"],
                "training_tokens": result["training_tokens"],
                "fits_on": [r["instance"] for r in result["instances"] if r["fits"]],
                "cheapest": {k: cheapest[k] for k in ("instance", "hours", "cost_usd", "basis")}
                if cheapest
                else None,
            }
        )
    )
    return 0


def register(subparsers, fmt=argparse.RawDescriptionHelpFormatter) -> None:
    """Add `estimate` to the `tuneforge` sub-command parsers."""
    p = subparsers.add_parser(
        "estimate",
        formatter_class=fmt,
        help="peak GPU memory, training time and cost of a recipe, before running it",
        description="From the model's config.json (no weights): parameters, peak GPU memory of LoRA or\n"
        "QLoRA training at the recipe's sequence length and batch, training tokens, and for every\n"
        "GPU instance of the catalog whether it fits and what the run costs (reference throughputs,\n"
        "scaled by model size, unless --throughput gives a measured one).",
        epilog="examples:\n  tuneforge estimate configs/llama3-8b-qlora.yaml --tokens 5000000\n"
        "  tuneforge estimate configs/mistral-7b-lora.yaml training.max_steps=1000 --instance g6e.xlarge",
    )
    p.add_argument("recipe", nargs="?", help="recipe file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. lora.r=8")
    p.add_argument("--tokens", type=int, help="training-split tokens (default: stats.json or characters/4)")
    p.add_argument("--model-config", metavar="CONFIG_JSON", help="the model's config.json")
    p.add_argument("--throughput", type=float, help="measured training tokens/s per GPU")
    p.add_argument("--instance", help="only these instances (comma-separated)")
    p.add_argument("--catalog", action="append", metavar="FILE", help="extra catalog file (repeatable)")
    p.add_argument("--top", type=int, default=15, help="rows to print (default 15)")
    p.add_argument("--out", help="also write estimate.json here")
    p.set_defaults(func=cmd_estimate)
