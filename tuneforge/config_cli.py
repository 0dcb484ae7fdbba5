"""`tuneforge config`: the effective recipe, and every key with its meaning."""

from __future__ import annotations

import argparse
import json
import sys

from tuneforge.recipes import all_keys, dump_recipe, load_recipe


def cmd_config_show(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print(dump_recipe(recipe), end="")
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    keys = {k: v for k, v in all_keys().items() if not args.section or k.startswith(args.section + ".")}
    if not keys:
        print(f"no section '{args.section}'", file=sys.stderr)
        return 2
    width = max(len(k) for k in keys)
    for key, (default, doc) in keys.items():
        print(f"{key:<{width}}  {json.dumps(default):<28} {doc}")
    return 0


def register(sub, fmt) -> None:
    config = sub.add_parser(
        "config",
        help="show the effective recipe, or every key with its meaning",
        formatter_class=fmt,
        description="Recipes merge dataclass defaults < YAML file < KEY=VALUE overrides.",
    )
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "show",
        help="print the merged recipe as YAML",
        formatter_class=fmt,
        description="Print the recipe that a command would run: defaults < RECIPE < KEY=VALUE overrides.",
        epilog="example:\n  tuneforge config show configs/demo-cpu.yaml lora.r=8",
    )
    p.add_argument("recipe", nargs="?", help="recipe file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. lora.r=8")
    p.set_defaults(func=cmd_config_show)
    p = csub.add_parser(
        "keys",
        formatter_class=fmt,
        help="every key, its default and one line on what it does",
        description="List every recipe key with its default and its one-line docstring.",
        epilog="example:\n  tuneforge config keys training",
    )
    p.add_argument("section", nargs="?", help="only this section (model, data, lora, training, ...)")
    p.set_defaults(func=cmd_config_keys)
