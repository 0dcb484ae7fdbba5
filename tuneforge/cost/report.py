"""Cost reports: Markdown and a self-contained HTML page (inline SVG bars of the cost per 1,000 requests by
instance, split by resource). Imports no torch.

    generate_cost_report(CostAnalyzer().analyze(...))                 # one instance
    generate_cost_report(CostAnalyzer().compare_configurations(...))  # several configurations

Every cost shows whether it is measured or estimated, and from what; the breakdown shows the GPU, CPU
and memory shares of the hourly price, of the training cost and of the cost per 1,000 requests. With
`serving_estimates` (tuneforge cost gpus) a second table lists the measured serving cost and the
estimated ones on GPU instances, each labelled with how it was reached. Every report ends with the prices
it used (`analysis["prices"]`, from `price_record`): each one's date, source, and whether it was checked
against the provider's own page.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneforge.report_files import write_report

RESOURCES = ("gpu", "cpu", "memory")
RESOURCE_COLOURS = {"gpu": "#2f6fde", "cpu": "#e07b39", "memory": "#3f9c5a"}
# Each provider's own pages: a price read there on its date was checked against the provider's page.
PROVIDER_SITES = {
    "aws": ("aws.amazon.com",),
    "gcp": ("cloud.google.com",),
    "azure": ("azure.microsoft.com",),
    "lambda": ("lambda.ai", "lambdalabs.com"),
    "runpod": ("runpod.io",),
    "modal": ("modal.com",),
}


def usd(value: float | None) -> str:
    """How every amount appears in the reports."""
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4g}"


def num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def rate(value: float | None) -> str:
    """A throughput: 17,905 rather than 1.79e+04."""
    return num(value) if value is None or value < 1000 else f"{value:,.0f}"


def _basis(basis: str | None, source: str | None) -> str:
    if not basis:
        return ""
    return f"{basis}" + (f" ({source})" if source else "")


# --------------------------------------------------------------------------- where each price comes from


def price_record(instance: dict[str, Any], spot: bool = False) -> dict[str, Any]:
    """One price as a report needs it: the figure, its date, its source and the catalog's note on it
    (`instance` is a catalog Instance's model_dump())."""
    price = instance["spot_usd_per_hour"] if spot else instance["on_demand_usd_per_hour"]
    keys = ("provider", "price_date", "source", "note")
    return {"instance": instance["name"], "usd_per_hour": price, "spot": spot} | {
        k: instance.get(k) for k in keys
    }


def price_checked(price: dict[str, Any]) -> str:
    """Whether the price was read on its date from the provider's own page: yes, or what instead."""
    if price.get("provider") == "custom":
        return "given by you"
    if not (price.get("note") or "").lower().startswith("confirmed"):
        return "no"
    host = urlparse(price.get("source") or "").hostname or ""
    sites = PROVIDER_SITES.get(price.get("provider") or "", ())
    if any(host == site or host.endswith("." + site) for site in sites):
        return "yes"
    return "no: read from a third-party page"


def price_note(price: dict[str, Any]) -> str:
    """The catalog's note less the confirmed / not confirmed that `price_checked` already says."""
    note = re.sub(r"^(not )?confirmed( in this session)?[\s:;,]*", "", price.get("note") or "", flags=re.I)
    if note.startswith("("):  # "(list price as commonly quoted); ..." -> "list price as commonly quoted; ..."
        note = re.sub(r"^\(([^()]*)\)", r"\1", note)
    note = re.sub(
        r"^same page[\s;,]*", "", note
    )  # the catalog's "same page" as the entry above: the source says it
    return note or "-"


def price_rows(prices: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per price used: what a reader needs to trust it or check it again."""
    return [
        {
            "price": p["instance"],
            "USD/h": usd(p["usd_per_hour"]) + (" spot" if p.get("spot") else ""),
            "date": p.get("price_date") or "undated",
            "checked against the provider's page": price_checked(p),
            "source": p.get("source") or "none",
            "note": price_note(p),
        }
        for p in prices
    ]


def other_notes(notes: list[str], prices: list[dict[str, Any]]) -> list[str]:
    """The notes that are not a price's own (those are in the prices table)."""
    own = {p.get("note") for p in prices}
    return [n for n in notes if n not in own]


PRICES_ADVICE = (
    "Prices change: check the source before spending; put your own prices in a file of the catalog's shape "
    "(--catalog FILE)."
)


def analysis_rows(analysis: dict[str, Any]) -> list[tuple[str, str]]:
    """(item, value) for one instance's analysis: price, training, inference and the breakdown."""
    inst, pricing = analysis["instance"], analysis["pricing"]
    hw = f"{inst['gpu_count']}x {inst['gpu']}" if inst["gpu_count"] else "CPU only"
    rows = [
        ("instance", f"{inst['provider']} {inst['name']} ({hw})"),
        (
            "price per hour",
            f"{usd(pricing['usd_per_hour'])} ({'spot' if pricing['spot'] else 'on-demand'}, "
            f"{pricing.get('price_date') or 'undated'}, {pricing.get('source') or 'no source'})",
        ),
    ]
    t = analysis.get("training")
    if t:
        rows += [
            ("training hours", f"{num(t['hours'])} ({_basis(t['basis'], t['source'])})"),
            ("training cost", usd(t["cost_usd"])),
        ]
    else:
        rows.append(("training cost", "n/a (no training hours given)"))
    inf = analysis.get("inference")
    if inf:
        how = _basis(inf["basis"], inf["source"])
        rows += [
            ("requests per second", f"{num(inf['requests_per_second'])} ({how})"),
            ("output tokens per second", num(inf["output_tokens_per_second"])),
            ("inference cost per 1K requests", usd(inf["cost_per_1k_requests_usd"])),
            ("inference cost per 1M output tokens", usd(inf["cost_per_1m_output_tokens_usd"])),
        ]
    else:
        rows.append(("inference cost per 1K requests", "n/a (no throughput given)"))
    b = analysis["breakdown"]
    for key, label in (
        ("usd_per_hour", "per hour"),
        ("training_usd", "of the training cost"),
        ("inference_per_1k_requests_usd", "of the cost per 1K requests"),
    ):
        if key in b:
            rows.append((f"breakdown {label}", ", ".join(f"{r.upper()} {usd(b[key][r])}" for r in RESOURCES)))
    return rows


def comparison_rows(comparison: dict[str, Any]) -> list[dict[str, str]]:
    """One row per configuration for tables."""
    return [
        {
            "configuration": c["name"],
            "instance": f"{c['instance']} ({c['gpu']})",
            "USD/h": usd(c["usd_per_hour"]) + (" spot" if c["spot"] else ""),
            "training": usd(c["training_cost_usd"])
            + (f" ({c['training_basis']}, {num(c['training_hours'])} h)" if c["training_basis"] else ""),
            "per 1K requests": usd(c["cost_per_1k_requests_usd"])
            + (f" ({c['inference_basis']})" if c["inference_basis"] else ""),
            "per 1M output tokens": usd(c["cost_per_1m_output_tokens_usd"]),
            "GPU/CPU/memory per hour": " / ".join(usd(c["breakdown_usd_per_hour"][r]) for r in RESOURCES),
        }
        for c in comparison["configs"]
    ]


def serving_rows(analysis: dict[str, Any], with_how: bool = True) -> list[dict[str, str]]:
    """The measured serving row, then the estimated ones, labelled (from `serving_estimates`)."""
    est = analysis.get("serving_estimates") or {}
    rows = ([est["measured"]] if est.get("measured") else []) + list(est.get("rows") or [])
    out = []
    k = 0
    for r in rows:
        label = r["basis"] + (" (upper bound)" if r.get("upper_bound") else "")
        row = {
            "serving cost": label,
            "instance": r["instance"],
            "hardware": r["hardware"],
            "USD/h": usd(r["usd_per_hour"]),
            "req/s": rate(r["requests_per_second"]),
            "output tok/s": rate(r["output_tokens_per_second"]),
            "per 1K requests": usd(r["cost_per_1k_requests_usd"]),
            "per 1M output tokens": usd(r["cost_per_1m_output_tokens_usd"]),
        }
        if with_how or r is est.get("measured"):  # the row priced from the command line: its own words
            row["how"] = r["how"]
        else:  # a footnote number: the estimate's basis is printed below the table
            k += 1
            row["how"] = f"[{k}]"
        out.append(row)
    return out


def _serving_md(analysis: dict[str, Any]) -> list[str]:
    est = analysis.get("serving_estimates")
    if not est:
        return []
    lines = ["", "## Serving cost: measured and estimated", "", *_md_table(serving_rows(analysis))]
    lines += ["", f"How the estimates are made: {est['method']}."]
    if est.get("not_shown"):
        lines.append(f"{est['not_shown']} more GPU instances not shown (--top).")
    if est.get("skipped"):
        lines.append(
            "Skipped: " + "; ".join(f"{s['instance']} ({s['reason']})" for s in est["skipped"]) + "."
        )
    return lines


def _serving_html(analysis: dict[str, Any]) -> str:
    est = analysis.get("serving_estimates")
    if not est:
        return ""
    table = html_table(serving_rows(analysis))
    extra = f"<p>How the estimates are made: {html.escape(est['method'])}.</p>"
    if est.get("skipped"):
        skipped = "; ".join(f"{s['instance']} ({s['reason']})" for s in est["skipped"])
        extra += f"<p>Skipped: {html.escape(skipped)}.</p>"
    return f"<h2>Serving cost: measured and estimated</h2>{table}{extra}"


def _md_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    return [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(r[c] for c in cols) + " |" for r in rows),
    ]


def _bars(analysis: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, cost per 1K requests by resource) for the chart."""
    if "configs" in analysis:
        out = []
        for c in analysis["configs"]:
            if c["cost_per_1k_requests_usd"] is None:
                continue
            total_h = sum(c["breakdown_usd_per_hour"].values()) or 1.0
            out.append(
                (
                    c["name"],
                    {
                        r: c["cost_per_1k_requests_usd"] * c["breakdown_usd_per_hour"][r] / total_h
                        for r in RESOURCES
                    },
                )
            )
        return out
    est = analysis.get("serving_estimates")
    per_1k = (analysis.get("breakdown") or {}).get("inference_per_1k_requests_usd")
    if not est:
        return [(analysis["instance"]["name"], per_1k)] if per_1k else []
    bars = [(f"{analysis['instance']['name']} (measured)", per_1k)] if per_1k else []
    return bars + [
        (f"{r['instance']} (estimated)", r["inference_per_1k_requests_usd"])
        for r in est["rows"]
        if r.get("inference_per_1k_requests_usd")
    ]


def svg_cost_bars(analysis: dict[str, Any], width: int = 720) -> str:
    """Horizontal bars: cost per 1,000 requests per instance, stacked by GPU, CPU and memory share."""
    bars = _bars(analysis)
    if not bars:
        return "<p>No throughput given: no cost per 1,000 requests to plot.</p>"
    label_w, bar_h, gap, top = 220, 18, 8, 24
    plot_w = width - label_w - 110
    hi = max(sum(v.values()) for _, v in bars) or 1.0
    height = top + len(bars) * (bar_h + gap) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        "<title>cost per 1,000 requests</title>"
    ]
    x = label_w
    for r in RESOURCES:
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{RESOURCE_COLOURS[r]}"/>')
        parts.append(f'<text x="{x + 14}" y="13" font-size="11">{r.upper()}</text>')
        x += 80
    for k, (label, shares) in enumerate(bars):
        y = top + k * (bar_h + gap)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 5}" font-size="12" text-anchor="end">'
            f"{html.escape(label[:32])}</text>"
        )
        x = float(label_w)
        for r in RESOURCES:
            w = shares[r] / hi * plot_w
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                    f'fill="{RESOURCE_COLOURS[r]}">'
                    f"<title>{r.upper()} {usd(shares[r])}</title></rect>"
                )
            x += w
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y + bar_h - 5}" font-size="11">{usd(sum(shares.values()))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def generate_cost_report(
    analysis: dict[str, Any], out_dir: str | Path | None = None, title: str = "Cost analysis"
) -> str:
    """The Markdown report; with `out_dir`, also writes cost.md, cost.html and cost.json there."""
    lines = [f"# {title}", ""]
    if "configs" in analysis:
        lines += _md_table(comparison_rows(analysis))
        cheapest = analysis.get("cheapest") or {}
        lines += [
            "",
            f"Cheapest training: {cheapest.get('training') or 'n/a'}; cheapest serving: "
            f"{cheapest.get('inference') or 'n/a'}.",
        ]
        notes = sorted({n for c in analysis["configs"] for n in c["notes"]})
    elif "instance" in analysis:
        lines += ["| item | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in analysis_rows(analysis))]
        notes = analysis.get("notes", [])
    else:  # estimates only
        notes = []
    lines += _serving_md(analysis)
    rule = analysis.get("breakdown_rule") or (analysis.get("breakdown") or {}).get("rule")
    lines += ["", f"Breakdown rule: {rule}."] if rule else []
    prices = analysis.get("prices") or []
    notes = other_notes(notes, prices)
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    lines += [
        "",
        "Costs per request assume the instance serves at the given throughput all the time; idle time costs "
        "the same per hour.",
    ]
    if prices:
        lines += ["", "## Prices used", "", *_md_table(price_rows(prices)), "", PRICES_ADVICE]
    markdown = "\n".join(lines) + "\n"
    if out_dir is not None:
        page = render_cost_html(analysis, title)
        write_report(out_dir, ("cost.md", "cost.html", "cost.json"), markdown, page, analysis)
    return markdown


def html_table(rows: list[dict[str, str]]) -> str:
    """An HTML table of rows that share their keys (the column names), every cell escaped."""
    cols = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_cost_html(analysis: dict[str, Any], title: str = "Cost analysis") -> str:
    if "configs" in analysis:
        table = html_table(comparison_rows(analysis))
        notes = sorted({n for c in analysis["configs"] for n in c["notes"]})
    elif "instance" not in analysis:  # estimates only
        table, notes = "", []
    else:
        table = (
            "<table><tr><th>item</th><th>value</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                for k, v in analysis_rows(analysis)
            )
            + "</table>"
        )
        notes = analysis.get("notes", [])
    rule = analysis.get("breakdown_rule") or (analysis.get("breakdown") or {}).get("rule") or ""
    prices = analysis.get("prices") or []
    prices_html = (
        f"<h2>Prices used</h2>{html_table(price_rows(prices))}<p>{html.escape(PRICES_ADVICE)}</p>"
        if prices
        else ""
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#1f2933}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd2d9;padding:4px 8px;"
        "text-align:left;font-size:13px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{table}{_serving_html(analysis)}"
        f"<h2>Cost per 1,000 requests</h2>{svg_cost_bars(analysis)}"
        f"<p>Breakdown rule: {html.escape(rule)}.</p>"
        + "".join(f"<p><strong>Note:</strong> {html.escape(n)}</p>" for n in other_notes(notes, prices))
        + prices_html
        + "</body></html>\n"
    )
