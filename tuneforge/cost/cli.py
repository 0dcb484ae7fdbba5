"""`tuneforge cost` and `tuneforge estimate`: what a run and an endpoint cost, and what a recipe will need.

    tuneforge cost --instance g5.xlarge --hours 3 --bench runs/bench/results.json
    tuneforge cost --instance p5.48xlarge --mlflow-run-id 3f2a... --rps 12.5
    tuneforge cost --instance g6.xlarge,g5.xlarge,gpu_1x_a10 --rps 2 --tok-s 300   # compare
    tuneforge cost --compare configs.yaml        # configurations: CostAnalyzer.compare_configurations
    tuneforge cost --bench results.json --instance c7i.large --estimate-gpus --top 8   # + GPU estimates
    tuneforge cost --list                        # the catalog with dates and sources
    tuneforge estimate configs/llama3-8b-qlora.yaml --tokens 2000000

Each prints a table, then one JSON line; reports go to --out (cost.md, cost.html, cost.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError, TuneforgeError

log = logging.getLogger(__name__)

CPU_DEVICE_PREFIX = "cpu"


def _catalog(args: argparse.Namespace):
    from tuneforge.cost.catalog import load_catalog

    return load_catalog(args.catalog or [])


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


# --------------------------------------------------------------------------- inputs


def throughput_from_benchmark(path: str | Path, level: int | None = None):
    """The serving throughput of a `tuneforge bench` results.json: the given level (0-based), or the level
    with the highest request throughput."""
    from tuneforge.cost.analyzer import Throughput

    results, run = _bench_run(path, level)
    return Throughput(
        run.summary.request_throughput_rps,
        run.summary.output_throughput_tok_s or None,
        "measured",
        f"{path}, {run.load.label()}",
        results.server_device or "unknown",
    )


def _bench_run(path: str | Path, level: int | None):
    """(results, the run of `level`, or the one with the highest request throughput)."""
    from tuneforge.results import read_bench_results

    results = read_bench_results(path)
    runs = results.runs
    usable = [r for r in runs if r.summary.requests.completed > 0]
    if level is not None:
        if not 0 <= level < len(runs):
            raise ConfigError(f"--level {level}: {path} has levels 0..{len(runs) - 1}")
        usable = [runs[level]]
        if runs[level].summary.requests.completed == 0:
            raise ConfigError(f"{path}: level {level} completed no request; nothing to price")
    if not usable:
        raise ConfigError(f"{path}: no level completed any request; nothing to price")
    return results, max(usable, key=lambda r: r.summary.request_throughput_rps)


def benchmark_workload(path: str | Path, level: int | None = None) -> dict[str, Any]:
    """What the priced benchmark level served: the model name, its concurrency and the mean output tokens
    per completed request (what GPU estimates are shaped to)."""
    results, run = _bench_run(path, level)
    completed = run.summary.requests.completed
    per_request = run.summary.output_tokens / completed if completed else None
    return {
        "model": results.target.get("model"),
        "concurrency": run.load.in_flight,
        "output_len": per_request or results.workload.get("max_tokens"),
    }


def training_from_mlflow(run_id: str, tracking_uri: str | None) -> tuple[float, str, str]:
    """(hours, source, device) from a tracked training run's final/train_runtime (seconds)."""
    from tuneforge.tracking import ExperimentTracker

    run = ExperimentTracker.for_run(run_id, tracking_uri).client.get_run(run_id)
    seconds = run.data.metrics.get("final/train_runtime")
    if seconds is None:
        raise ConfigError(f"MLflow run {run_id} has no final/train_runtime metric (did it finish?)")
    device = run.data.params.get("env.device", "unknown")
    return seconds / 3600.0, f"MLflow run {run_id} final/train_runtime on {device}", device


def _check_training_device(inst, device: str) -> None:
    if device.lower().startswith(CPU_DEVICE_PREFIX) and inst.is_gpu:
        raise ConfigError(
            f"the training run ran on a CPU ({device}); its duration says nothing about GPU instance "
            f"'{inst.name}'. Use `tuneforge estimate RECIPE` for a GPU estimate, or --hours"
        )


# --------------------------------------------------------------------------- cost


def cmd_cost(args: argparse.Namespace) -> int:
    from tuneforge.cost.analyzer import CostAnalyzer, Throughput
    from tuneforge.cost.catalog import custom_instance
    from tuneforge.cost.report import analysis_rows, comparison_rows, generate_cost_report

    catalog = _catalog(args)
    if args.list:
        return _list_catalog(catalog)
    extra = []
    if args.price_per_hour is not None:
        name = args.instance or "custom"
        extra.append(
            custom_instance(
                name,
                args.price_per_hour,
                args.gpu,
                args.gpu_count,
                args.gpu_memory_gb,
                args.vcpus,
                args.memory_gb,
            )
        )
    analyzer = CostAnalyzer(catalog, extra)
    if args.compare:
        configs = _read_configs(args.compare)
        result = analyzer.compare_configurations(configs)
        return _finish_compare(result, args, comparison_rows, generate_cost_report)
    if not args.instance and not args.estimate_gpus:
        print(
            "error: cost needs --instance NAME (or --list, --compare FILE, --estimate-gpus)", file=sys.stderr
        )
        return 2
    hours, t_source, device = args.hours, "given with --hours", None
    if hours is None and args.mlflow_run_id:
        hours, t_source, device = training_from_mlflow(args.mlflow_run_id, args.tracking_uri)
    throughput = None
    if args.bench:
        throughput = throughput_from_benchmark(args.bench, args.level)
        if args.measured_on:
            throughput.device = args.measured_on
    elif args.rps is not None or args.tok_s is not None:
        throughput = Throughput(args.rps, args.tok_s, "estimated", "given on the command line", "unknown")
    names = [n.strip() for n in (args.instance or "").split(",") if n.strip()]
    if args.estimate_gpus:
        if len(names) > 1:
            raise ConfigError("--estimate-gpus goes with one --instance (the measured one), or none")
        return _cost_with_estimates(
            args, analyzer, names[0] if names else None, hours, t_source, device, throughput
        )
    if len(names) > 1:
        configs = []
        for n in names:
            cfg: dict[str, Any] = {"instance": n, "spot": args.spot}
            if hours is not None:
                cfg.update(training_hours=hours, training_basis="measured", training_source=t_source)
            if throughput is not None:
                cfg.update(
                    requests_per_second=throughput.requests_per_second,
                    output_tokens_per_second=throughput.output_tokens_per_second,
                    basis=throughput.basis,
                    source=throughput.source,
                    device=throughput.device,
                )
            configs.append(cfg)
        result = analyzer.compare_configurations(configs)
        return _finish_compare(result, args, comparison_rows, generate_cost_report)
    inst = analyzer.instance(names[0])
    if device is not None:
        _check_training_device(inst, device)
    analysis = analyzer.analyze(inst, hours, "measured", t_source, throughput, args.spot)
    out = Path(args.out)
    generate_cost_report(analysis, out, f"Cost on {inst.name}")
    _print_rows(analysis_rows(analysis))
    for note in analysis["notes"]:
        print(f"note: {note}")
    print(f"report  {out / 'cost.html'} (also cost.md, cost.json)")
    if args.mlflow_run_id and args.log_to_run:
        _log_cost(args.mlflow_run_id, args.tracking_uri, analysis, out)
    training, inference = analysis["training"] or {}, analysis["inference"] or {}
    payload = {
        "report": str(out / "cost.html"),
        "instance": inst.name,
        "usd_per_hour": analysis["pricing"]["usd_per_hour"],
        "spot": args.spot,
        "training_hours": training.get("hours"),
        "training_cost_usd": training.get("cost_usd"),
        "cost_per_1k_requests_usd": inference.get("cost_per_1k_requests_usd"),
        "cost_per_1m_output_tokens_usd": inference.get("cost_per_1m_output_tokens_usd"),
        "inference_basis": inference.get("basis"),
        "breakdown_usd_per_hour": analysis["breakdown"]["usd_per_hour"],
    }
    print(json.dumps(payload, default=str))
    return 0


def _estimate_inputs(args: argparse.Namespace) -> tuple[float, str | None, int | None, float | None]:
    """(params_b, model, concurrency, output_len) for the GPU estimates: flags first, then the benchmark."""
    from tuneforge.cost.serving import params_from_model_name

    workload = benchmark_workload(args.bench, args.level) if args.bench else {}
    model = args.model or workload.get("model")
    params_b = args.params_b or params_from_model_name(model)
    if params_b is None:
        raise ConfigError(
            "--estimate-gpus needs the model's size: pass --params-b (billions), or --model with a known "
            f"name (the benchmark's model is {model!r})"
        )
    concurrency = args.concurrency or workload.get("concurrency")
    return params_b, model, concurrency, args.output_len or workload.get("output_len")


def _measured_row(analysis: dict[str, Any]) -> dict[str, Any] | None:
    inf, inst = analysis.get("inference"), analysis["instance"]
    if not inf:
        return None
    return {
        "basis": inf["basis"],
        "instance": inst["name"],
        "provider": inst["provider"],
        "hardware": f"{inst['gpu_count']}x {inst['gpu']}" if inst["gpu_count"] else "CPU",
        "device": inf["device"],
        "usd_per_hour": analysis["pricing"]["usd_per_hour"],
        "requests_per_second": inf["requests_per_second"],
        "output_tokens_per_second": inf["output_tokens_per_second"],
        "cost_per_1k_requests_usd": inf["cost_per_1k_requests_usd"],
        "cost_per_1m_output_tokens_usd": inf["cost_per_1m_output_tokens_usd"],
        "how": f"{inf['basis']}: {inf['source']} (served on {inf['device']})",
    }


def _cost_with_estimates(args, analyzer, name, hours, t_source, device, throughput) -> int:
    """The measured cost on --instance (if given), then estimated serving costs on the catalog's GPUs."""
    from tuneforge.cost.report import analysis_rows, generate_cost_report, serving_rows
    from tuneforge.cost.serving import estimate_serving_costs

    params_b, model, concurrency, output_len = _estimate_inputs(args)
    estimates = estimate_serving_costs(
        analyzer, params_b, concurrency, output_len, model, args.spot, args.top
    )
    analysis: dict[str, Any] = {}
    if name:
        inst = analyzer.instance(name)
        if device is not None:
            _check_training_device(inst, device)
        analysis = analyzer.analyze(inst, hours, "measured", t_source, throughput, args.spot)
    measured = _measured_row(analysis) if analysis else None
    estimates["measured"] = measured
    analysis["serving_estimates"] = estimates
    out = Path(args.out)
    generate_cost_report(analysis, out, f"Cost on {name}" if name else "Estimated serving cost")
    if name:
        _print_rows(analysis_rows(analysis))
        for note in analysis["notes"]:
            print(f"note: {note}")
    print()
    _print_table(serving_rows(analysis, with_how=False))
    for i, r in enumerate(estimates["rows"], 1):
        print(f"  [{i}] {r['instance']}: {r['how']}")
    print(f"method: {estimates['method']}")
    if estimates["skipped"]:
        print("skipped: " + "; ".join(f"{s['instance']} ({s['reason']})" for s in estimates["skipped"]))
    print(f"report  {out / 'cost.html'} (also cost.md, cost.json)")
    if args.mlflow_run_id and args.log_to_run and name:
        _log_cost(args.mlflow_run_id, args.tracking_uri, analysis, out)
    training = analysis.get("training") or {}
    keep = (
        "basis",
        "instance",
        "hardware",
        "usd_per_hour",
        "requests_per_second",
        "output_tokens_per_second",
        "cost_per_1k_requests_usd",
        "cost_per_1m_output_tokens_usd",
        "how",
    )
    payload = {
        "report": str(out / "cost.html"),
        "instance": name,
        "spot": args.spot,
        "training_hours": training.get("hours"),
        "training_cost_usd": training.get("cost_usd"),
        "training_basis": training.get("basis"),
        "measured_serving": {k: measured[k] for k in (*keep, "device")} if measured else None,
        "estimated_serving": [
            {**{k: r[k] for k in keep}, "upper_bound": r["upper_bound"]} for r in estimates["rows"]
        ],
        "estimate_inputs": {
            "params_b": params_b,
            "model": model,
            "concurrency": concurrency,
            "output_len": output_len,
        },
        "estimate_skipped": estimates["skipped"],
    }
    print(json.dumps(payload, default=str))
    return 0


def _read_configs(path: str) -> list[dict[str, Any]]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--compare {path}: cannot read it ({e})") from None
    configs = data.get("configs") if isinstance(data, dict) else data
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise ConfigError(f"--compare {path}: expected a list of configurations (mappings with 'instance')")
    return configs


def _finish_compare(result, args, comparison_rows, generate_cost_report) -> int:
    out = Path(args.out)
    generate_cost_report(result, out, "Cost comparison")
    _print_table(comparison_rows(result))
    print(f"report  {out / 'cost.html'} (also cost.md, cost.json)")
    compact = [
        {
            k: c[k]
            for k in (
                "name",
                "instance",
                "usd_per_hour",
                "training_cost_usd",
                "cost_per_1k_requests_usd",
                "cost_per_1m_output_tokens_usd",
                "training_basis",
                "inference_basis",
            )
        }
        for c in result["configs"]
    ]
    print(json.dumps({"report": str(out / "cost.html"), "configs": compact, "cheapest": result["cheapest"]}))
    return 0


def _list_catalog(catalog) -> int:
    rows = [
        {
            "name": i.name,
            "provider": i.provider,
            "GPU": f"{i.gpu_count}x {i.gpu}" if i.is_gpu else "-",
            "vCPU": i.vcpus or "-",
            "USD/h": f"{i.on_demand_usd_per_hour:g}",
            "spot": f"{i.spot_usd_per_hour:g}" if i.spot_usd_per_hour else "-",
            "date": i.price_date or "-",
        }
        for i in catalog.instances.values()
    ]
    _print_table(rows)
    print("sources and notes: tuneforge/cost/catalog.yaml (and your --catalog files)")
    print(json.dumps({"instances": [i.name for i in catalog.instances.values()], "files": catalog.files}))
    return 0


def _log_cost(run_id: str, tracking_uri: str | None, analysis: dict[str, Any], out: Path) -> None:
    from tuneforge.tracking import ExperimentTracker

    tracker = ExperimentTracker.for_run(run_id, tracking_uri)
    metrics = {"cost/usd_per_hour": analysis["pricing"]["usd_per_hour"]}
    if analysis["training"]:
        metrics["cost/training_usd"] = analysis["training"]["cost_usd"]
    if analysis["inference"] and analysis["inference"]["cost_per_1k_requests_usd"] is not None:
        metrics["cost/per_1k_requests_usd"] = analysis["inference"]["cost_per_1k_requests_usd"]
    tracker.log_metrics(metrics, step=0)
    tracker.set_tags({"cost/instance": analysis["instance"]["name"]})
    for name in ("cost.md", "cost.html", "cost.json"):
        tracker.log_artifact(out / name, "cost")
    print(f"mlflow  logged to run {run_id}")


# --------------------------------------------------------------------------- estimate


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
            f"           cheapest fit: {r['instance']} ({r['gpu']}), {r['hours']:.3g} h, "
            f"${r['cost_usd']:.4g} ({r['basis']}); all: tuneforge estimate RECIPE"
        )


def cmd_estimate(args: argparse.Namespace) -> int:
    from tuneforge.config import load_recipe
    from tuneforge.cost.estimate import estimate_recipe
    from tuneforge.cost.report import usd
    from tuneforge.data.size import training_split_tokens

    recipe = load_recipe(args.recipe, args.overrides)
    model_config, config_source = None, ""
    if args.model_config:
        model_config = json.loads(Path(args.model_config).read_text())
        config_source = args.model_config
    tokens, tokens_source = training_split_tokens(recipe, args.tokens)
    catalog = _catalog(args)
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
            "hours": f"{r['hours']:.3g}" if r["hours"] is not None else "-",
            "cost": usd(r["cost_usd"]) if r["cost_usd"] is not None else "-",
            "basis": r["basis"] or "-",
        }
        for r in result["instances"][: args.top]
    ]
    _print_table(rows)
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


# --------------------------------------------------------------------------- parsers


def register(subparsers) -> None:
    """Add `cost` and `estimate` to the `tuneforge` sub-command parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "cost",
        formatter_class=fmt,
        help="training and serving cost on cloud instances, with a breakdown by resource",
        description="Training cost = hourly rate x hours (--hours, or a tracked run's duration).\n"
        "Serving cost per 1K requests = rate / (3600 x requests/s) x 1000, from a `tuneforge bench`\n"
        "results.json (measured) or --rps (estimated). Prices come from the catalog (tuneforge/cost/\n"
        "catalog.yaml, each with its date and source) plus your --catalog files.\n"
        "--estimate-gpus adds ESTIMATED serving costs on the catalog's GPU instances, labelled as such:\n"
        "a vLLM throughput measured on a GPU, scaled by memory bandwidth and model size (tuneforge/cost/\n"
        "serving.py says how); a CPU benchmark is priced on CPU instances only.",
        epilog="examples:\n  tuneforge cost --list\n"
        "  tuneforge cost --instance g5.xlarge --hours 3 --bench runs/bench/results.json\n"
        "  tuneforge cost --instance g6.xlarge,gpu_1x_a10,runpod-l40s --rps 2.5\n"
        "  tuneforge cost --bench results.json --instance c7i.large --estimate-gpus --top 8\n"
        "  tuneforge cost --instance my-box --price-per-hour 0.9 --gpu A10-24GB --rps 2",
    )
    p.add_argument("--instance", help="catalog instance name, or several separated by commas to compare")
    p.add_argument("--hours", type=float, help="training hours")
    p.add_argument("--mlflow-run-id", help="training hours from this tracked run (final/train_runtime)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--log-to-run", action="store_true", help="also log the costs to the --mlflow-run-id run")
    p.add_argument("--bench", metavar="RESULTS_JSON", help="serving throughput from a tuneforge bench run")
    p.add_argument("--level", type=int, help="which load level of --bench (0-based; default: the fastest)")
    p.add_argument("--measured-on", help="override where --bench ran: cpu or gpu:<name>")
    p.add_argument("--rps", type=float, help="serving throughput in requests/s (an estimate)")
    p.add_argument("--tok-s", type=float, help="serving throughput in output tokens/s (an estimate)")
    p.add_argument("--spot", action="store_true", help="use spot prices")
    p.add_argument(
        "--estimate-gpus",
        action="store_true",
        help="also print ESTIMATED serving costs on the catalog's GPU instances (scaled from measured GPU "
        "references by memory bandwidth and model size; never from a CPU benchmark)",
    )
    p.add_argument("--params-b", type=float, help="with --estimate-gpus: model parameters, billions")
    p.add_argument("--model", help="with --estimate-gpus: model name (default: the benchmark's)")
    p.add_argument("--concurrency", type=int, help="with --estimate-gpus: requests in flight to estimate")
    p.add_argument(
        "--output-len", type=float, help="with --estimate-gpus: output tokens per request to estimate"
    )
    p.add_argument("--top", type=int, default=10, help="with --estimate-gpus: estimated rows (default 10)")
    p.add_argument(
        "--price-per-hour", type=float, help="price a machine of your own (name it with --instance)"
    )
    p.add_argument("--gpu", help="with --price-per-hour: GPU model, e.g. A10-24GB")
    p.add_argument("--gpu-count", type=int, help="with --price-per-hour: number of GPUs")
    p.add_argument("--gpu-memory-gb", type=float, help="with --price-per-hour: memory per GPU")
    p.add_argument("--vcpus", type=int, help="with --price-per-hour: vCPUs")
    p.add_argument("--memory-gb", type=float, help="with --price-per-hour: host memory")
    p.add_argument("--catalog", action="append", metavar="FILE", help="extra catalog file (repeatable)")
    p.add_argument("--compare", metavar="FILE", help="YAML/JSON list of configurations to compare")
    p.add_argument("--list", action="store_true", help="print the catalog")
    p.add_argument("--out", default="runs/cost", help="folder for cost.md, cost.html, cost.json")
    p.set_defaults(func=cmd_cost)

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
