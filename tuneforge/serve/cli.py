"""`tuneforge serve`: the FastAPI service on vLLM (when installed) or transformers.

tuneforge serve smollm2-135m-instruct --adapter demo=runs/demo-cpu/adapter --port 8000
curl -N localhost:8000/generate -H 'content-type: application/json' -d '{"prompt": "Hi", "model": "demo"}'
"""

from __future__ import annotations

import argparse
import logging

from tuneforge.config import EMBEDDED_MODEL
from tuneforge.errors import ConfigError
from tuneforge.recipes import MOVED, load_recipe

log = logging.getLogger(__name__)


def register(sub, fmt) -> None:
    p = sub.add_parser(
        "serve",
        formatter_class=fmt,
        help="serve a model (and adapters) over HTTP: SSE, batches, OpenAI routes",
        description="Serve MODEL with FastAPI on vLLM (when installed) or transformers.\n"
        "Routes: POST /generate (SSE; stream=false for JSON), POST /generate/batch, /v1/completions,\n"
        "/v1/chat/completions, /v1/models, /v1/adapters (runtime load/unload), /health, /ready, /metrics.\n"
        "Settings also come from TUNEFORGE_* environment variables (flags win), e.g. TUNEFORGE_API_KEY;\n"
        "engine settings are inference.* keys (see `tuneforge config keys inference`).",
        epilog="examples:\n"
        f"  tuneforge serve {EMBEDDED_MODEL} --adapter demo=runs/demo-cpu/adapter\n"
        "  tuneforge serve meta-llama/Meta-Llama-3-8B-Instruct inference.gpu_memory_utilization=0.85\n"
        "  tuneforge serve --recipe configs/demo-cpu.yaml --adapter-dir runs --api-key $KEY\n"
        "  tuneforge serve mistralai/Mistral-7B-Instruct-v0.3 --profile latency",
    )
    p.add_argument("model", nargs="?", help=f"model reference (default: the recipe's, else {EMBEDDED_MODEL})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="inference.* overrides")
    p.add_argument("--recipe", help="take the model and inference settings from this recipe")
    p.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=PATH", help="serve an adapter (repeatable)"
    )
    p.add_argument("--adapter-dir", help="allow loading adapters at runtime from inside this folder")
    p.add_argument("--engine", choices=("auto", "vllm", "transformers"), help="default: inference.engine")
    p.add_argument(
        "--profile",
        choices=("throughput", "latency"),
        help="latency: fastest single stream (FP8 weights on GPUs with FP8 tensor cores) for "
        "settings the recipe leaves unset; default: inference.profile (throughput)",
    )
    p.add_argument("--host", help="default 127.0.0.1")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or TUNEFORGE_API_KEY)")
    p.add_argument("--served-name", help="model name clients use (default: the reference)")
    p.add_argument("--cors-origin", action="append", dest="cors_origins", help="allowed origin (repeatable)")
    p.add_argument("--max-pending", type=int, help="requests in progress before 429 (default 256)")
    p.add_argument("--request-timeout", type=float, dest="request_timeout_s", help="seconds (default 300)")
    p.add_argument(
        "--engine-restarts",
        type=int,
        help="how many times a stopped engine is started again over the server's life, its adapters "
        "reloaded (default 3; 0: stay down)",
    )
    p.add_argument(
        "--api-processes",
        type=int,
        help="HTTP processes over one vLLM engine, each on its own core, for many concurrent streams "
        "(as vllm serve --api-server-count; default 1). Adapters come from --adapter only",
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        default=None,
        help="report ready without first generating a few tokens (by default the first client does not "
        "wait for kernels vLLM compiles on first use)",
    )
    p.add_argument("--cache-dir", help="cache folder for the embedded default")
    p.set_defaults(func=cmd_serve)


def parse_adapters(items: list[str]) -> dict[str, str]:
    adapters = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(
                f"--adapter {item!r}: expected NAME=PATH, e.g. --adapter demo=runs/demo-cpu/adapter"
            )
        adapters[name] = path
    return adapters


def settings_from_args(args: argparse.Namespace):
    from pathlib import Path

    from tuneforge.serve.settings import load_settings

    model, overrides = args.model, list(args.overrides)  # sorted by tuneforge.command.parse
    bad = [o for o in overrides if not o.startswith(("inference.", "sampling.", *MOVED))]
    if bad:
        raise ConfigError(
            f"{bad[0]}: serve takes inference.* and sampling.* overrides only (e.g. inference.dtype=float32)"
        )
    recipe = load_recipe(args.recipe, overrides)
    inference = recipe.inference
    if args.engine:
        inference.engine = args.engine
    if getattr(args, "profile", None):
        inference.profile = args.profile
    adapters = parse_adapters(args.adapter)
    for name, path in adapters.items():
        if not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(
                f"--adapter {name}={path}: no adapter_config.json there (a PEFT adapter folder?)"
            )
    return load_settings(
        model=model or (recipe.model.name_or_path if args.recipe else None),
        served_name=args.served_name,
        adapters={k: str(Path(v).resolve()) for k, v in adapters.items()} or None,
        adapter_dir=args.adapter_dir,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        cors_origins=args.cors_origins,
        max_pending=args.max_pending,
        request_timeout_s=args.request_timeout_s,
        engine_restarts=args.engine_restarts,
        api_processes=getattr(args, "api_processes", None),
        warmup=getattr(args, "warmup", None),
        inference=inference,
        sampling=recipe.sampling,
        cache_dir=args.cache_dir or recipe.model.cache_dir,
        revision=recipe.model.revision if args.recipe and not model else None,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tuneforge.engines.select import pick_engine
    from tuneforge.models.resolve import resolve_model
    from tuneforge.serve.app import build_app

    settings = settings_from_args(args)
    resolve_model(settings.model, settings.cache_dir)  # a bad reference fails here, not in the background
    engine = pick_engine(settings.inference.engine)
    base = f"http://{settings.host}:{settings.port}"
    model = next(iter(settings.adapters), settings.name)
    auth = " -H 'authorization: Bearer $TUNEFORGE_API_KEY'" if settings.api_key else ""
    procs = settings.api_processes
    if procs > 1:
        from tuneforge.serve import processes

        processes.check(settings, engine)
    where = f"{base}, {procs} API processes" if procs > 1 else base
    print(
        f"serving {settings.name} ({engine}) on {where}; adapters: {', '.join(settings.adapters) or 'none'}"
    )
    print(f"  ready when {base}/ready says 200; then, for example:")
    print(
        f"  curl -N {base}/generate -H 'content-type: application/json'{auth} "
        f"""-d '{{"prompt": "Hello", "model": "{model}", "max_tokens": 32}}'"""
    )
    if procs > 1:
        processes.serve(settings)
    else:
        uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
