"""One report for a whole `tuneforge run`: <run folder>/report.html (self-contained: inline CSS and SVG
plots, readable offline) and report.md with the same sections. Imports no torch.

    python -m tuneforge.pipeline.report runs/demo-cpu     # render again from a recorded run folder

Sections: the recipe, the data, loss and learning-rate curves, base against fine-tuned with the most
changed cases, serving latency and throughput against load, resource use, cost with each price's date,
source and check, and the time per stage (pipeline/sections.py). A stage that did not run is one line.
Each stage's own report (eval/report.html, bench/report.html, cost/cost.html) keeps every detail.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from tuneforge.cost.report import usd
from tuneforge.pipeline.page import html_page, markdown, number
from tuneforge.pipeline.record import RunRecord, read_run
from tuneforge.pipeline.sections import build_sections
from tuneforge.pipeline.stages import Context
from tuneforge.results import load_label


def headline(rec: RunRecord) -> list[str]:
    """The lines under the title: where the run is, when it finished, and what came out of it."""
    where = f"Run folder {rec.folder}"
    finished = [s["finished_at"] for s in rec.stages.values() if s.get("finished_at")]
    if finished:
        where += f"; last stage finished {datetime.fromtimestamp(max(finished), UTC):%Y-%m-%d %H:%M} UTC"
    glance = []
    losses = [h["loss"] for h in rec.history if "loss" in h]
    if losses:
        glance.append(f"training loss {number(losses[0])} -> {number(losses[-1])}")
    if rec.compare and rec.compare["base"]["metrics"]:
        name = next(iter(rec.compare["base"]["metrics"]))
        base, tuned = (rec.compare[side]["metrics"][name]["mean"] for side in ("base", "finetuned"))
        glance.append(f"{name} {base:.2f} base -> {tuned:.2f} fine-tuned")
    if rec.bench and rec.bench["runs"]:
        best = max(rec.bench["runs"], key=lambda r: r["summary"]["request_throughput_rps"])
        rps = number(best["summary"]["request_throughput_rps"])
        glance.append(f"{rps} requests/s at {load_label(best['load'])} on {rec.bench.get('server_device')}")
    if rec.cost and rec.cost.get("training"):
        glance.append(
            f"training cost {usd(rec.cost['training']['cost_usd'])} on {rec.cost['instance']['name']}"
        )
    return [where] + (["At a glance: " + "; ".join(glance)] if glance else [])


def render(rec: RunRecord) -> tuple[str, str]:
    """(report.md, report.html) of a recorded run."""
    model = (rec.recipe.get("model") or {}).get("name_or_path", "")
    title = f"{rec.recipe.get('name', rec.folder.name)}: {model}" if model else rec.folder.name
    sections, lead = build_sections(rec), headline(rec)
    return markdown(title, lead, sections), html_page(title, lead, sections)


def write_files(rec: RunRecord) -> Path:
    """Write report.md and report.html into the run folder; returns report.html's path."""
    md, page = render(rec)
    (rec.folder / "report.md").write_text(md)
    path = rec.folder / "report.html"
    path.write_text(page)
    return path


def write_report(ctx: Context) -> Path:
    """The report stage of `tuneforge run`: from the stages done for this run's settings."""
    from tuneforge.recipes import dump_recipe

    return write_files(read_run(ctx.folder, ctx.results, dump_recipe(ctx.recipe)))


if __name__ == "__main__":
    print(write_files(read_run(sys.argv[1])))
