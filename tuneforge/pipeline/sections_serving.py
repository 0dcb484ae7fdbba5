"""The run report's serving, resource and cost sections (from bench/results.json and cost/cost.json).
Imports no torch.
"""

from __future__ import annotations

from typing import Any

from tuneforge.cost.report import PRICES_ADVICE, price_record, price_rows, serving_rows, usd
from tuneforge.pipeline import plots
from tuneforge.pipeline.page import Figure, Folded, Links, Section, Table, Text, not_run, number
from tuneforge.pipeline.record import RunRecord
from tuneforge.results import load_label
from tuneforge.tables import duration

PERCENTILES = ("p50", "p95", "p99")
MEMORY_OF = {"GPU": "GPU memory allocated", "process RSS": "the process's resident memory (no GPU)"}


def _percentiles(latency: dict[str, Any]) -> str:
    return " / ".join(number(latency.get(q)) for q in PERCENTILES)


def _load_axis(runs: list[dict[str, Any]]) -> tuple[list[float], str] | None:
    """Each run's load as a number for the x axis (concurrency, or request rate), with its label."""
    if all(r["load"].get("mode") == "rate" for r in runs):
        xs, label = [r["load"].get("rate") for r in runs], "request rate (requests/s)"
    else:
        xs, label = [r["load"].get("concurrency") for r in runs], "concurrency (requests in flight)"
    return (xs, label) if all(x is not None for x in xs) else None


def serving_section(rec: RunRecord) -> Section:
    b = rec.bench
    if b is None:
        return not_run("serving", "Serving: latency and throughput", "bench")
    runs = b["runs"]
    target, workload = b.get("target") or {}, b.get("workload") or {}
    rows = []
    for run in runs:
        s = run["summary"]
        lat = s["latency_ms"]
        rows.append([
            load_label(run["load"]),
            f"{s['requests']['completed']}/{s['requests']['total']}",
            number(s["request_throughput_rps"]),
            number(s["output_throughput_tok_s"]),
            _percentiles(lat["ttft"]),
            _percentiles(lat["tpot"]),
            _percentiles(lat["e2e"]),
        ])  # fmt: skip
    header = ["load", "completed/sent", "requests/s", "output tokens/s", "TTFT ms p50 / p95 / p99",
              "TPOT ms p50 / p95 / p99", "end-to-end ms p50 / p95 / p99"]  # fmt: skip
    blocks: list = [
        Text(f"Served as model '{target.get('model')}' on {b.get('server_device') or 'an unrecorded device'} "
             f"({target.get('api')} API), loaded with prompts from {workload.get('prompts')}, up to "
             f"{workload.get('max_tokens')} output tokens each. TTFT: time to the first token; TPOT: time "
             "per output token after the first; latencies count completed requests."),
        Table(header, rows),
    ]  # fmt: skip
    axis = _load_axis(runs)
    if axis:
        svg = plots.serving_sweep(axis[0], axis[1], [r["summary"] for r in runs])
        blocks.append(Figure(svg, "Throughput and latency percentiles at each load level benchmarked."))
    blocks.append(Links("Every request, latency distribution", [("bench/report.html", "bench/report.html")]))
    return Section("serving", "Serving: latency and throughput", blocks)


def _stat(resources: dict[str, Any], name: str, stat: str) -> Any:
    return (resources.get(name) or {}).get(stat)


def _training_resources(rec: RunRecord) -> list[list[str]]:
    peak = next((h for h in reversed(rec.history) if "peak_memory_gb" in h), None)
    speeds = [h["tokens_per_second"] for h in rec.history if "tokens_per_second" in h]
    t = rec.stages["train"]["summary"]
    memory = "not recorded"
    if peak:
        of = MEMORY_OF.get(peak["peak_memory_of"], peak["peak_memory_of"])
        memory = f"{number(peak['peak_memory_gb'])} GB ({of})"
    return [
        ["peak memory", memory],
        [
            "tokens per second (mean of the logged steps)",
            number(sum(speeds) / len(speeds)) if speeds else "n/a",
        ],
        ["examples per second", number(t.get("train_samples_per_second"))],
    ]


def _serving_resources(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for run in runs:
        res = run.get("resources") or {}

        def pair(a: tuple[str, str], b: tuple[str, str], res=res) -> str:
            return f"{number(_stat(res, *a))} / {number(_stat(res, *b))}"

        gpu = [
            pair(("gpu_utilization_percent", "mean"), ("gpu_utilization_percent", "max")),
            pair(("gpu_memory_used_gb", "max"), ("gpu_memory_total_gb", "max")),
            number(_stat(res, "gpu_power_w", "mean")),
        ]
        rows.append([
            load_label(run["load"]),
            pair(("cpu_utilization_percent", "mean"), ("cpu_utilization_percent", "max")),
            number(_stat(res, "process_memory_gb", "max")),
            number(_stat(res, "system_memory_used_gb", "max")),
            *(gpu if res.get("gpu_available") else ["no GPU"] * 3),
        ])  # fmt: skip
    return rows


def resources_section(rec: RunRecord) -> Section:
    key, title = "resources", "Resource use"
    if "train" not in rec.stages and rec.bench is None:
        return not_run(key, title, "train and bench")
    blocks: list = []
    if "train" in rec.stages:
        blocks += [Text("Training:"), Table(["measurement", "value"], _training_resources(rec))]
    else:
        blocks.append(Text("Training: not run (the train stage did not run for these settings)."))
    if rec.bench is None:
        blocks.append(Text("Serving: not run (the bench stage did not run for these settings)."))
        return Section(key, title, blocks)
    header = ["load", "CPU % mean / max (machine)", "server memory GB (max)", "system memory GB (max)",
              "GPU % mean / max", "GPU memory GB max / total", "GPU power W (mean)"]  # fmt: skip
    blocks += [
        Text("Serving, sampled while each load level ran:"),
        Table(header, _serving_resources(rec.bench["runs"])),
    ]
    notes = sorted({(r.get("resources") or {}).get("note") for r in rec.bench["runs"]} - {None})
    blocks += [Text(f"Note: {n}") for n in notes]
    return Section(key, title, blocks)


def _prices(cost: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """(the prices the cost stage used, whether they were recorded then): cost.json's own record, else
    today's catalog entries of the same instances (a cost.json written before prices were recorded)."""
    if cost.get("prices"):
        return cost["prices"], True
    from tuneforge.cost.catalog import load_catalog

    instances = load_catalog([]).instances
    names = [cost["instance"]["name"]] if cost.get("instance") else []
    names += [r["instance"] for r in (cost.get("serving_estimates") or {}).get("rows") or []]
    spot = (cost.get("pricing") or {}).get("spot", False)
    return [
        price_record(instances[n].model_dump(), spot) for n in dict.fromkeys(names) if n in instances
    ], False


def _measured_rows(c: dict[str, Any]) -> list[list[str]]:
    """The instance the run was priced on, and what training and serving cost there."""
    inst, t, inf = c["instance"], c.get("training"), c.get("inference")
    rows = [["priced on", f"{inst['provider']} {inst['name']} at {usd(c['pricing']['usd_per_hour'])}/h"]]
    if t:
        rows.append(["training", f"{usd(t['cost_usd'])} for {duration(t['hours'] * 3600)} ({t['basis']})"])
    else:
        rows.append(["training", "n/a (no training time)"])
    if inf:
        per_1k, per_1m = usd(inf["cost_per_1k_requests_usd"]), usd(inf["cost_per_1m_output_tokens_usd"])
        at = f"{number(inf['requests_per_second'])} requests/s ({inf['source']})"
        rows.append(
            ["serving, measured", f"{per_1k} per 1,000 requests, {per_1m} per 1M output tokens at {at}"]
        )
    return rows


def cost_section(rec: RunRecord) -> Section:
    key, title = "cost", "Cost"
    c = rec.cost
    if c is None:
        return not_run(key, title, "cost")
    blocks: list = []
    if c.get("instance"):
        blocks.append(Table(["item", "cost"], _measured_rows(c)))
    serving = serving_rows(c, with_how=False)
    if serving:
        blocks.append(Table(list(serving[0]), [list(r.values()) for r in serving]))
        est = c["serving_estimates"]
        how = "\n".join(f"[{i}] {r['instance']}: {r['how']}" for i, r in enumerate(est["rows"], 1))
        blocks.append(Folded("How each estimate was made", f"{how}\n\nMethod: {est['method']}."))
    prices, recorded = _prices(c)
    blocks.append(
        Text("Prices used: each one's date, source, and whether it was checked against the provider's page.")
    )
    if not recorded:
        blocks.append(
            Text("(From today's catalog: this run's cost.json was written before prices were recorded.)")
        )
    rows = price_rows(prices)
    blocks.append(
        Table(list(rows[0]), [list(r.values()) for r in rows]) if rows else Text("No price recorded.")
    )
    blocks += [Text(PRICES_ADVICE), Links("Breakdown by resource", [("cost/cost.html", "cost/cost.html")])]
    return Section(key, title, blocks)
