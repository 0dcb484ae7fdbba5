"""Benchmark reports: a Markdown table, a self-contained HTML page (inline SVG: end-to-end latency CDF,
throughput against load), and the compact summary for the final JSON line. Imports no torch.

`results` is what `tuneforge bench` writes to results.json:
    {"title", "target": {...}, "workload": {...}, "notes": [...],
     "runs": [{"load": {...}, "summary": stats.summarize(...), "resources": ResourceMonitor.summary(),
               "records": [RequestRecord as dict, ...]}, ...]}
Every run's report shows TTFT, TPOT, ITL and end-to-end latency at p50/p95/p99, request and output-token
throughput, the request counts with errors by kind, and the resource use (GPU utilization and memory,
CPU utilization, process memory); where there was no GPU it says so instead of showing a number.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tuneforge.bench.stats import METRIC_NAMES, METRICS, PERCENTILES
from tuneforge.report_files import write_report
from tuneforge.results import load_label

COLOURS = ("#2f6fde", "#e07b39", "#3f9c5a", "#b03a8c", "#8a6d3b", "#5b5f97", "#c44e52", "#55a868")


def fmt(value: Any) -> str:
    """How every number appears in the reports (4 significant digits; n/a for a missing value)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _res(resources: dict[str, Any] | None, name: str, stat: str) -> Any:
    return ((resources or {}).get(name) or {}).get(stat)


def run_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(measurement, value) for one run: every number the report shows for it."""
    s, res = run["summary"], run.get("resources")
    req = s["requests"]
    rows = [
        ("requests", f"{req['total']} sent, {req['completed']} completed, {req['failed']} failed"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in req["errors"].items()) or "none"),
        ("duration (s)", fmt(s["duration_s"])),
        ("request throughput (req/s)", fmt(s["request_throughput_rps"])),
        ("output throughput (tok/s)", fmt(s["output_throughput_tok_s"])),
    ]
    for name in METRICS:
        d = s["latency_ms"][name]
        rows.append(
            (
                f"{name.upper()} (ms) mean / p50 / p95 / p99 / max",
                " / ".join(fmt(d[k]) for k in ("mean", *(f"p{p}" for p in PERCENTILES), "max")),
            )
        )
    if res is not None:
        gpu = res.get("gpu_available")
        note = res.get("note") or "no GPU"
        rows += [
            (
                "GPU utilization (%) mean / max",
                " / ".join(fmt(_res(res, "gpu_utilization_percent", k)) for k in ("mean", "max"))
                if gpu
                else f"n/a ({note})",
            ),
            (
                "GPU memory used (GB) max / total",
                " / ".join(fmt(_res(res, f"gpu_memory_{k}_gb", "max")) for k in ("used", "total"))
                if gpu
                else f"n/a ({note})",
            ),
            ("GPU power (W) mean", fmt(_res(res, "gpu_power_w", "mean")) if gpu else "n/a"),
            (
                "CPU utilization (%) mean / max",
                " / ".join(fmt(_res(res, "cpu_utilization_percent", k)) for k in ("mean", "max")),
            ),
            ("process memory (GB) max", fmt(_res(res, "process_memory_gb", "max"))),
            ("system memory used (GB) max", fmt(_res(res, "system_memory_used_gb", "max"))),
        ]
    return rows


def table_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per run for the console table: load, counts, throughputs, p50/p99 latencies, GPU use,
    CPU use (mean, whole machine) and memory (max, the server process with --server-pid, else this one)."""
    rows = []
    for run in results["runs"]:
        s, res = run["summary"], run.get("resources")
        lat = s["latency_ms"]
        rows.append(
            {
                "load": load_label(run["load"]),
                "ok/sent": f"{s['requests']['completed']}/{s['requests']['total']}",
                "req/s": fmt(s["request_throughput_rps"]),
                "out tok/s": fmt(s["output_throughput_tok_s"]),
                "TTFT p50/p99 ms": f"{fmt(lat['ttft']['p50'])}/{fmt(lat['ttft']['p99'])}",
                "TPOT p50/p99 ms": f"{fmt(lat['tpot']['p50'])}/{fmt(lat['tpot']['p99'])}",
                "E2E p50/p99 ms": f"{fmt(lat['e2e']['p50'])}/{fmt(lat['e2e']['p99'])}",
                "GPU util %": fmt(_res(res, "gpu_utilization_percent", "mean")),
                "GPU mem GB": fmt(_res(res, "gpu_memory_used_gb", "max")),
                "CPU %": fmt(_res(res, "cpu_utilization_percent", "mean")),
                "mem GB": fmt(_res(res, "process_memory_gb", "max")),
            }
        )
    return rows


def summary_line(results: dict[str, Any]) -> dict[str, Any]:
    """The compact payload of the final JSON line: per run, counts, throughputs and latency percentiles."""
    runs = []
    for run in results["runs"]:
        s, res = run["summary"], run.get("resources") or {}
        runs.append(
            {
                "load": run["load"],
                "requests": s["requests"],
                "request_throughput_rps": s["request_throughput_rps"],
                "output_throughput_tok_s": s["output_throughput_tok_s"],
                "latency_ms": {
                    m: {k: s["latency_ms"][m][k] for k in ("mean", "p50", "p95", "p99")} for m in METRICS
                },
                "gpu_available": res.get("gpu_available"),
                "gpu_utilization_percent_mean": _res(res, "gpu_utilization_percent", "mean"),
                "gpu_memory_used_gb_max": _res(res, "gpu_memory_used_gb", "max"),
                "cpu_utilization_percent_mean": _res(res, "cpu_utilization_percent", "mean"),
            }
        )
    return {"target": results.get("target"), "runs": runs}


def _header(results: dict[str, Any]) -> list[str]:
    t, w = results.get("target") or {}, results.get("workload") or {}
    parts = [f"{k} `{v}`" for k, v in t.items() if v is not None]
    lines = ["Target: " + ", ".join(parts)] if parts else []
    if w:
        lines.append("Workload: " + ", ".join(f"{k} {v}" for k, v in w.items() if v is not None))
    return lines


def generate_benchmark_report(
    results: dict[str, Any], out_dir: str | Path | None = None, title: str | None = None
) -> str:
    """The Markdown report; with `out_dir`, also writes report.md, report.html and results.json there."""
    title = title or results.get("title") or "Serving benchmark"
    lines = [f"# {title}", "", *_header(results), ""]
    lines += [f"**Note:** {n}" for n in results.get("notes", [])]
    lines += [
        "",
        "Latencies count completed requests; TPOT excludes the first token; a stream that ended in an error "
        "event counts as failed.",
    ]
    for run in results["runs"]:
        lines += ["", f"## {load_label(run['load'])}", "", "| measurement | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in run_rows(run)]
    markdown = "\n".join(lines) + "\n"
    if out_dir is not None:
        page = render_benchmark_html(results, title)
        write_report(out_dir, ("report.md", "report.html", "results.json"), markdown, page, results)
    return markdown


# --------------------------------------------------------------------------- plots


def _e2e_ms(run: dict[str, Any]) -> list[float]:
    return sorted(
        r["e2e_s"] * 1000 for r in run.get("records", []) if r.get("ok") and r.get("e2e_s") is not None
    )


def svg_latency_cdf(results: dict[str, Any], width: int = 640, height: int = 260) -> str:
    """Cumulative distribution of end-to-end latency, one line per run (completed requests)."""
    series = [(load_label(run["load"]), _e2e_ms(run)) for run in results["runs"]]
    series = [(label, values) for label, values in series if values]
    if not series:
        return "<p>No completed request: no latency distribution to plot.</p>"
    left, top, plot_w, plot_h = 60, 10, width - 80, height - 60
    hi = max(v[-1] for _, v in series) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20 * len(series)}" '
        'role="img"><title>end-to-end latency CDF</title>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9aa5b1"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#9aa5b1"/>',
        f'<text x="{left - 8}" y="{top + 4}" font-size="11" text-anchor="end">1.0</text>',
        f'<text x="{left - 8}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>',
        f'<text x="{left}" y="{top + plot_h + 16}" font-size="11">0 ms</text>',
        f'<text x="{left + plot_w}" y="{top + plot_h + 16}" font-size="11" text-anchor="end">'
        f"{fmt(hi)} ms</text>",
        f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" font-size="11" text-anchor="middle">'
        "end-to-end latency (ms); vertical: share of completed requests</text>",
    ]
    for k, (label, values) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        n = len(values)
        points = [f"{left:.1f},{top + plot_h:.1f}"]
        for i, v in enumerate(values):
            x = left + v / hi * plot_w
            points.append(f"{x:.1f},{top + plot_h - i / n * plot_h:.1f}")
            points.append(f"{x:.1f},{top + plot_h - (i + 1) / n * plot_h:.1f}")
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(points)}"/>'
        )
        y = height + 20 * k
        parts.append(f'<rect x="{left}" y="{y - 9}" width="12" height="4" fill="{colour}"/>')
        parts.append(
            f'<text x="{left + 18}" y="{y - 4}" font-size="11">{html.escape(label)} ({n} requests)</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_throughput(results: dict[str, Any], width: int = 640, height: int = 240) -> str:
    """Request and output-token throughput against the load level of each run (a sweep)."""
    runs = results["runs"]
    if len(runs) < 2:
        return ""
    xs = [
        r["load"].get("rate") if r["load"].get("mode") == "rate" else r["load"].get("concurrency")
        for r in runs
    ]
    if any(x is None for x in xs):
        return ""
    xlabel = "request rate (req/s)" if runs[0]["load"].get("mode") == "rate" else "concurrency"
    left, top, plot_w, plot_h = 60, 16, width - 120, height - 60
    x_hi = max(xs) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        "<title>throughput against load</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#9aa5b1"/>',
        f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" font-size="11" text-anchor="middle">'
        f"{xlabel}</text>",
    ]
    for k, (key, label) in enumerate(
        (("request_throughput_rps", "req/s"), ("output_throughput_tok_s", "output tok/s"))
    ):
        ys = [r["summary"][key] for r in runs]
        y_hi = max(ys) or 1.0
        colour = COLOURS[k]
        pts = [
            (left + x / x_hi * plot_w, top + plot_h - y / y_hi * plot_h) for x, y in zip(xs, ys, strict=True)
        ]
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
            f'points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in pts)}"/>'
        )
        for (px, py), y in zip(pts, ys, strict=True):
            out.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                f"<title>{label}: {fmt(y)}</title></circle>"
            )
            out.append(
                f'<text x="{px + 5:.1f}" y="{py - 5 + 12 * k:.1f}" font-size="10" '
                f'fill="{colour}">{fmt(y)}</text>'
            )
        out.append(
            f'<text x="{left + plot_w + 8}" y="{top + 12 + 14 * k}" font-size="11" fill="{colour}">{label} '
            f"(max {fmt(y_hi)})</text>"
        )
    for x in xs:
        px = left + x / x_hi * plot_w
        out.append(
            f'<text x="{px:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{fmt(x)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def render_benchmark_html(results: dict[str, Any], title: str | None = None) -> str:
    """A self-contained page: the measurements of every run, the latency CDF and the throughput sweep."""
    title = title or results.get("title") or "Serving benchmark"
    notes = "".join(f"<p><strong>Note:</strong> {html.escape(n)}</p>" for n in results.get("notes", []))
    header = "".join(f"<p>{html.escape(line)}</p>" for line in _header(results))
    tables = ""
    for run in results["runs"]:
        body = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in run_rows(run)
        )
        tables += (
            f"<h2>{html.escape(load_label(run['load']))}</h2>"
            f"<table><tr><th>measurement</th><th>value</th></tr>{body}</table>"
        )
    sweep = svg_throughput(results)
    legend = "".join(f"<li>{m.upper()}: {html.escape(METRIC_NAMES[m])}</li>" for m in METRICS)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#1f2933}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd2d9;padding:4px 8px;"
        "text-align:left;font-size:13px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{header}{notes}<ul>{legend}</ul>"
        "<p>Latencies count completed requests; a stream that ended in an error event counts as failed.</p>"
        f"<h2>End-to-end latency distribution</h2>{svg_latency_cdf(results)}"
        + (f"<h2>Throughput against load</h2>{sweep}" if sweep else "")
        + f"{tables}</body></html>\n"
    )
