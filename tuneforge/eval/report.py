"""Evaluation reports: Markdown, a self-contained HTML page (inline SVG plot, no network needed), and
JSON with every number. Imports no torch.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tuneforge.report_files import write_report

WORST_BEST = 5


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metric_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, base, fine-tuned, difference) for a comparison, or (metric, value, '', '') for one model."""
    if "finetuned" in results:
        base, tuned = results["base"], results["finetuned"]
        rows = []
        if "perplexity" in base or "perplexity" in tuned:
            b, t = base.get("perplexity"), tuned.get("perplexity")
            rows.append(
                ("perplexity", _fmt(b), _fmt(t), _fmt(t - b) if b is not None and t is not None else "n/a")
            )
        for name, summary in base["metrics"].items():
            rows.append(
                (
                    name,
                    _fmt(summary["mean"]),
                    _fmt(tuned["metrics"][name]["mean"]),
                    _fmt(results["delta"].get(name)),
                )
            )
        return rows
    rows = [("perplexity", _fmt(results["perplexity"]), "", "")] if "perplexity" in results else []
    return rows + [(name, _fmt(s["mean"]), "", "") for name, s in results["metrics"].items()]


def case_deltas(results: dict[str, Any], metric: str) -> list[tuple[float, dict, dict]]:
    """(fine-tuned score - base score, base case, fine-tuned case) per case, most improved first."""
    pairs = []
    for b, t in zip(results["base"]["cases"], results["finetuned"]["cases"], strict=True):
        bs, ts = b["scores"].get(metric), t["scores"].get(metric)
        pairs.append(((ts if ts is not None else 0.0) - (bs if bs is not None else 0.0), b, t))
    return sorted(pairs, key=lambda p: -p[0])


def generate_report(
    results: dict[str, Any], out_dir: str | Path | None = None, title: str = "Evaluation"
) -> str:
    """The Markdown report; with `out_dir`, also writes report.md, report.html and results.json there."""
    comparing = "finetuned" in results
    head = (
        "| metric | base | fine-tuned | difference |\n|---|---|---|---|"
        if comparing
        else "| metric | value |\n|---|---|"
    )
    lines = [f"# {title}", ""]
    if comparing:
        lines += [
            f"Base: `{results['base']['model']}`; fine-tuned: `{results['finetuned']['model']}`; "
            f"{results['base']['num_examples']} identical cases, same generation settings "
            f"({_settings(results.get('sampling', {}))}).",
            "",
        ]
    else:
        lines += [f"Model: `{results['model']}`; {results['num_examples']} cases.", ""]
    lines += [f"**Note:** {n}" for n in results.get("notes", [])] + ([""] if results.get("notes") else [])
    lines.append(head)
    for row in metric_rows(results):
        lines.append("| " + " | ".join(row if comparing else row[:2]) + " |")
    failures = _failures(results)
    if failures:
        lines += ["", f"Cases that failed to generate or score: {failures}."]
    if comparing and results["base"]["cases"]:
        metric = next(iter(results["base"]["metrics"]))
        ranked = case_deltas(results, metric)
        lines += ["", f"## Most improved cases ({metric})", "", *_case_lines(ranked[:WORST_BEST])]
        lines += ["", f"## Most worsened cases ({metric})", "", *_case_lines(ranked[::-1][:WORST_BEST])]
    markdown = "\n".join(lines) + "\n"
    if out_dir is not None:
        page = render_html(results, title)
        write_report(out_dir, ("report.md", "report.html", "results.json"), markdown, page, results)
    return markdown


def _notes_html(results: dict[str, Any]) -> str:
    return "".join(f"<p><strong>Note:</strong> {html.escape(n)}</p>" for n in results.get("notes", []))


def _settings(sampling: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampling.items()) or "defaults"


def _failures(results: dict[str, Any]) -> int:
    runs = [results["base"], results["finetuned"]] if "finetuned" in results else [results]
    return sum(1 for run in runs for c in run["cases"] if c["prediction"] is None)


def _case_lines(ranked) -> list[str]:
    out = []
    for delta, b, t in ranked:
        out += [
            f"- **{b['id']}** (change {delta:+.2f})",
            f"  - reference: `{_short(b['reference'])}`",
            f"  - base: `{_short(b['prediction'])}`",
            f"  - fine-tuned: `{_short(t['prediction'])}`",
        ]
    return out


def _short(text: Any, n: int = 160) -> str:
    text = "(no output)" if text is None else str(text).replace("\n", " ").replace("`", "'")
    return text if len(text) <= n else text[: n - 1] + "…"


def _svg_bars(results: dict[str, Any]) -> str:
    """Per-metric bars, base against fine-tuned (or one model), as inline SVG."""
    rows = [r for r in metric_rows(results) if r[0] != "perplexity"]
    width, bar_h, gap = 640, 16, 14
    height = len(rows) * (2 * bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    y = 20
    for name, base, tuned, _ in rows:
        parts.append(f'<text x="0" y="{y + bar_h}" font-size="12">{html.escape(name)}</text>')
        for value, colour, label in ((base, "#9aa5b1", "base"), (tuned, "#2f6fde", "fine-tuned")):
            if value in ("", "n/a"):
                continue
            w = max(1.0, float(value) * 330)  # leaves room for the label
            parts.append(f'<rect x="130" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{colour}"/>')
            parts.append(f'<text x="{136 + w:.1f}" y="{y + bar_h - 4}" font-size="11">{label} {value}</text>')
            y += bar_h
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def _svg_cases(results: dict[str, Any], metric: str) -> str:
    """One column per case: the base score (grey) and the fine-tuned score (blue), so wins, losses and ties
    are visible at a glance."""
    pairs = list(zip(results["base"]["cases"], results["finetuned"]["cases"], strict=True))
    step = max(4, min(14, 900 // max(len(pairs), 1)))
    width, height, top = 60 + step * len(pairs), 150, 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" role="img">',
        f'<text x="0" y="{top + 4}" font-size="11">1.0</text>',
        f'<text x="0" y="{top + height}" font-size="11">0.0</text>',
        f'<line x1="40" y1="{top + height}" x2="{width}" y2="{top + height}" stroke="#cbd2d9"/>',
    ]
    for i, (b, t) in enumerate(pairs):
        x = 50 + i * step
        for case, colour, dx in ((b, "#9aa5b1", -1.5), (t, "#2f6fde", 1.5)):
            score = case["scores"].get(metric)
            if score is None:
                continue
            y = top + height - score * height
            parts.append(
                f'<circle cx="{x + dx:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{html.escape(case['id'])}: {score:.3f}</title></circle>"
            )
    parts.append(
        f'<text x="50" y="{top + height + 22}" font-size="11">cases in test order; grey: base, '
        f"blue: fine-tuned ({html.escape(metric)})</text></svg>"
    )
    return "".join(parts)


def render_html(results: dict[str, Any], title: str) -> str:
    comparing = "finetuned" in results
    header = (
        "<tr><th>metric</th><th>base</th><th>fine-tuned</th><th>difference</th></tr>"
        if comparing
        else "<tr><th>metric</th><th>value</th></tr>"
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (r if comparing else r[:2])) + "</tr>"
        for r in metric_rows(results)
    )
    cases = ""
    if comparing:
        metric = next(iter(results["base"]["metrics"]), None)
        if metric:
            rows = "".join(
                f"<tr><td>{html.escape(b['id'])}</td><td>{d:+.2f}</td><td><code>{html.escape(_short(b['reference']))}"
                f"</code></td><td><code>{html.escape(_short(b['prediction']))}</code></td><td><code>"
                f"{html.escape(_short(t['prediction']))}</code></td></tr>"
                for d, b, t in case_deltas(results, metric)
            )
            cases = (
                f"<h2>Per case ({html.escape(metric)})</h2>{_svg_cases(results, metric)}"
                f"<h2>Every case, most improved first ({html.escape(metric)})</h2><table><tr><th>id</th>"
                "<th>change</th><th>reference</th><th>base</th><th>fine-tuned</th></tr>" + rows + "</table>"
            )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#1f2933}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd2d9;padding:4px 8px;"
        "text-align:left;font-size:13px}code{font-size:12px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_notes_html(results)}<table>{header}{body}</table>"
        f"{_svg_bars(results)}{cases}"
        "</body></html>\n"
    )
