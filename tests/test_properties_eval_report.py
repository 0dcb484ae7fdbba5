"""Property 19 of the design: the report contains every computed metric; and the files it writes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.eval.report import generate_report

NAMES = st.lists(st.from_regex(r"[a-z][a-z_]{2,14}", fullmatch=True), min_size=1, max_size=6, unique=True)
SCORE = st.one_of(st.none(), st.floats(0, 1))


def run_result(names, rows, model, perplexity):
    """rows: one {metric: score or None} per case; each metric has its own scores, so rows mixed up
    between metrics show as wrong means."""
    cases = [
        {
            "id": f"c{i}",
            "prompt": "p",
            "reference": "r",
            "prediction": None if all(v is None for v in row.values()) else "x",
            "scores": row,
            "errors": {},
        }
        for i, row in enumerate(rows)
    ]
    metrics = {}
    for n in names:
        values = [row[n] for row in rows if row[n] is not None]
        mean = sum(values) / len(values) if values else None
        metrics[n] = {"mean": mean, "scored": len(values), "failed": len(rows) - len(values)}
    return {
        "model": model,
        "cases": cases,
        "num_examples": len(cases),
        "perplexity": perplexity,
        "metrics": metrics,
    }


# Feature: llm-fine-tuning-inference, Property 19: Evaluation report completeness
@settings(max_examples=100, deadline=None)
@given(names=NAMES, data=st.data(), ppl=st.tuples(st.floats(1, 1e4), st.floats(1, 1e4)))
def test_property_19_report_contains_every_computed_metric(names, data, ppl):
    rows = st.fixed_dictionaries({n: SCORE for n in names})
    base_rows = data.draw(st.lists(rows, min_size=1, max_size=6))
    tuned_rows = data.draw(st.lists(rows, min_size=len(base_rows), max_size=len(base_rows)))
    base = run_result(names, base_rows, "base", ppl[0])
    tuned = run_result(names, tuned_rows, "tuned", ppl[1])
    delta = {
        n: None
        if base["metrics"][n]["mean"] is None or tuned["metrics"][n]["mean"] is None
        else tuned["metrics"][n]["mean"] - base["metrics"][n]["mean"]
        for n in names
    }
    results = {"base": base, "finetuned": tuned, "delta": delta, "sampling": {"temperature": 0.0}}
    with tempfile.TemporaryDirectory() as out:
        markdown = generate_report(results, out)
        page = (Path(out) / "report.html").read_text()
        saved = json.loads((Path(out) / "results.json").read_text())
    for text in (markdown, page):
        assert f"{ppl[0]:.4f}" in text and f"{ppl[1]:.4f}" in text
        for n in names:
            row = next(
                line
                for line in text.replace("</tr>", "\n").splitlines()
                if f">{n}<" in line or f"| {n} |" in line
            )
            for run in (base, tuned):
                mean = run["metrics"][n]["mean"]
                assert (f"{mean:.4f}" if mean is not None else "n/a") in row
    assert saved["base"]["metrics"] == base["metrics"] and saved["finetuned"]["metrics"] == tuned["metrics"]
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch


def test_html_plots_every_scored_case_and_shows_notes(tmp_path):
    base = run_result(["exact_match"], [{"exact_match": v} for v in (0.0, 1.0, None)], "base", 3.0)
    tuned = run_result(["exact_match"], [{"exact_match": v} for v in (1.0, 1.0, 0.0)], "tuned", 2.0)
    results = {
        "base": base,
        "finetuned": tuned,
        "delta": {"exact_match": 0.1},
        "notes": ["the two models have different tokenizers"],
    }
    markdown = generate_report(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<circle") == 5  # 2 base scores + 3 fine-tuned scores; a failed case has none
    assert "different tokenizers" in page and "**Note:** the two models have different tokenizers" in markdown
