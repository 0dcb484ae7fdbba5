"""The bodies of `tuneforge cost instance | gpus | compare | catalog` (parsers: tuneforge/cost/cli.py).

Each prints a table, then one JSON line; the reports go to --out (cost.md, cost.html, cost.json). Imports
no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tuneforge.cost import inputs
from tuneforge.errors import ConfigError
from tuneforge.tables import print_pairs, print_table

COMPARED = (
    "name",
    "instance",
    "usd_per_hour",
    "training_cost_usd",
    "cost_per_1k_requests_usd",
    "cost_per_1m_output_tokens_usd",
    "training_basis",
    "inference_basis",
)
SERVING = (
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


def _analyzer(args: argparse.Namespace, custom_name: str | None = None):
    """The catalog (shipped + --catalog files) with the --price-per-hour machine, if any, added."""
    from tuneforge.cost.analyzer import CostAnalyzer
    from tuneforge.cost.catalog import load_catalog

    catalog = load_catalog(args.catalog or [])
    extra = inputs.custom_machines(args, custom_name) if custom_name else []
    return CostAnalyzer(catalog, extra)


def _report_line(out: Path) -> None:
    print(f"report  {out / 'cost.html'} (also cost.md, cost.json)")


def _print_analysis(analysis: dict[str, Any]) -> None:
    from tuneforge.cost.report import analysis_rows, other_notes

    print_pairs(analysis_rows(analysis))
    for note in other_notes(analysis["notes"], analysis.get("prices") or []):
        print(f"note: {note}")


def _prices(analyzer, names_and_spot: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Each price the tables used, once, with its date, source and catalog note."""
    from tuneforge.cost.report import price_record

    return [
        price_record(analyzer.instance(n).model_dump(), spot) for n, spot in dict.fromkeys(names_and_spot)
    ]


def _print_prices(prices: list[dict[str, Any]]) -> None:
    """The tables end with where each price comes from and whether it was checked."""
    from tuneforge.cost.report import PRICES_ADVICE, price_rows

    print()
    print_table(price_rows(prices), title="Prices used")
    print(PRICES_ADVICE)


# --------------------------------------------------------------------------- instance


def cmd_instance(args: argparse.Namespace) -> int:
    """One instance: the breakdown; several (NAME,NAME,...): the comparison table."""
    from tuneforge.cost.report import generate_cost_report

    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if not names:
        raise ConfigError("cost instance: give an instance NAME (`tuneforge cost catalog` lists them)")
    if len(names) > 1 and args.price_per_hour is not None:
        raise ConfigError("--price-per-hour prices one machine: give it one NAME")
    if len(names) > 1 and args.log_to_run:
        raise ConfigError("--log-to-run logs the cost of one instance: give one NAME")
    analyzer = _analyzer(args, names[0])
    hours, t_source, device = inputs.training_hours(args)
    throughput = inputs.serving_throughput(args)
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
        return _finish_compare(analyzer, analyzer.compare_configurations(configs), Path(args.out))
    inst = analyzer.instance(names[0])
    inputs.check_training_device(inst, device)
    analysis = analyzer.analyze(inst, hours, "measured", t_source, throughput, args.spot)
    analysis["prices"] = _prices(analyzer, [(inst.name, args.spot)])
    out = Path(args.out)
    generate_cost_report(analysis, out, f"Cost on {inst.name}")
    _print_analysis(analysis)
    _print_prices(analysis["prices"])
    _report_line(out)
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


# --------------------------------------------------------------------------- gpus


def _estimate_inputs(args: argparse.Namespace) -> tuple[float, str | None, int | None, float | None]:
    """(params_b, model, concurrency, output_len) for the GPU estimates: flags first, then the benchmark."""
    from tuneforge.cost.serving import params_from_model_name

    workload = inputs.benchmark_workload(args.bench, args.level) if args.bench else {}
    model = args.model or workload.get("model")
    params_b = args.params_b or params_from_model_name(model)
    if params_b is None:
        raise ConfigError(
            "cost gpus needs the model's size: pass --params-b (billions), or --model with a known "
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


def cmd_gpus(args: argparse.Namespace) -> int:
    """The measured cost on --instance (if given), then estimated serving costs on the catalog's GPUs."""
    from tuneforge.cost.report import generate_cost_report, serving_rows
    from tuneforge.cost.serving import estimate_serving_costs

    name = args.instance.strip() if args.instance else None
    if name and "," in name:
        raise ConfigError(
            f"cost gpus --instance {name}: one instance (the measured one); compare several with "
            "`tuneforge cost instance NAME,NAME`"
        )
    analyzer = _analyzer(args, name or "custom")
    hours, t_source, device = inputs.training_hours(args)
    throughput = inputs.serving_throughput(args)
    params_b, model, concurrency, output_len = _estimate_inputs(args)
    estimates = estimate_serving_costs(
        analyzer, params_b, concurrency, output_len, model, args.spot, args.top
    )
    analysis: dict[str, Any] = {}
    if name:
        inst = analyzer.instance(name)
        inputs.check_training_device(inst, device)
        analysis = analyzer.analyze(inst, hours, "measured", t_source, throughput, args.spot)
    measured = _measured_row(analysis) if analysis else None
    estimates["measured"] = measured
    analysis["serving_estimates"] = estimates
    priced = ([name] if name else []) + [r["instance"] for r in estimates["rows"]]
    analysis["prices"] = _prices(analyzer, [(n, args.spot) for n in priced])
    out = Path(args.out)
    generate_cost_report(analysis, out, f"Cost on {name}" if name else "Estimated serving cost")
    if name:
        _print_analysis(analysis)
    print()
    print_table(serving_rows(analysis, with_how=False))
    for i, r in enumerate(estimates["rows"], 1):
        print(f"  [{i}] {r['instance']}: {r['how']}")
    print(f"method: {estimates['method']}")
    if estimates["skipped"]:
        print("skipped: " + "; ".join(f"{s['instance']} ({s['reason']})" for s in estimates["skipped"]))
    _print_prices(analysis["prices"])
    _report_line(out)
    if args.mlflow_run_id and args.log_to_run and name:
        _log_cost(args.mlflow_run_id, args.tracking_uri, analysis, out)
    training = analysis.get("training") or {}
    payload = {
        "report": str(out / "cost.html"),
        "instance": name,
        "spot": args.spot,
        "training_hours": training.get("hours"),
        "training_cost_usd": training.get("cost_usd"),
        "training_basis": training.get("basis"),
        "measured_serving": {k: measured[k] for k in (*SERVING, "device")} if measured else None,
        "estimated_serving": [
            {**{k: r[k] for k in SERVING}, "upper_bound": r["upper_bound"]} for r in estimates["rows"]
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


# --------------------------------------------------------------------------- compare, catalog


def read_configs(path: str) -> list[dict[str, Any]]:
    """The configurations of a `cost compare` file: a list, or a mapping with `configs`."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cost compare {path}: cannot read it ({e})") from None
    configs = data.get("configs") if isinstance(data, dict) else data
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise ConfigError(
            f"cost compare {path}: expected a list of configurations (mappings with 'instance')"
        )
    return configs


def cmd_compare(args: argparse.Namespace) -> int:
    analyzer = _analyzer(args)
    return _finish_compare(analyzer, analyzer.compare_configurations(read_configs(args.file)), Path(args.out))


def _finish_compare(analyzer, result: dict[str, Any], out: Path) -> int:
    from tuneforge.cost.report import comparison_rows, generate_cost_report, other_notes

    result["prices"] = _prices(analyzer, [(c["instance"], c["spot"]) for c in result["configs"]])
    generate_cost_report(result, out, "Cost comparison")
    print_table(comparison_rows(result))
    for note in other_notes(sorted({n for c in result["configs"] for n in c["notes"]}), result["prices"]):
        print(f"note: {note}")
    _print_prices(result["prices"])
    _report_line(out)
    compact = [{k: c[k] for k in COMPARED} for c in result["configs"]]
    print(json.dumps({"report": str(out / "cost.html"), "configs": compact, "cheapest": result["cheapest"]}))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from tuneforge.cost.report import price_checked, price_record

    catalog = _analyzer(args).catalog
    rows = [
        {
            "name": i.name,
            "provider": i.provider,
            "GPU": f"{i.gpu_count}x {i.gpu}" if i.is_gpu else "-",
            "vCPU": i.vcpus or "-",
            "USD/h": f"{i.on_demand_usd_per_hour:g}",
            "spot": f"{i.spot_usd_per_hour:g}" if i.spot_usd_per_hour else "-",
            "date": i.price_date or "-",
            "checked": price_checked(price_record(i.model_dump())),
        }
        for i in catalog.instances.values()
    ]
    print_table(rows)
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
