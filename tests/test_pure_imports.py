"""Pure modules (config, formats, statistics, templates, errors) and the CLI entry import no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "tuneforge.config",
    "tuneforge.recipes",
    "tuneforge.models.speed_plan",
    "tuneforge.errors",
    "tuneforge.data.formats",
    "tuneforge.data.readers",
    "tuneforge.data.split",
    "tuneforge.data.stats",
    "tuneforge.data.templates",
    "tuneforge.data.preprocessor",
    "tuneforge.models.resolve",
    "tuneforge.eval.perplexity",
    "tuneforge.eval.metrics",
    "tuneforge.eval.report",
    "tuneforge.eval.evaluator",
    "tuneforge.bench.stats",
    "tuneforge.bench.report",
    "tuneforge.bench.resources",
    "tuneforge.bench.client",
    "tuneforge.bench.cli",
    "tuneforge.cost.catalog",
    "tuneforge.cost.analyzer",
    "tuneforge.cost.estimate",
    "tuneforge.models.shape",
    "tuneforge.models.memory",
    "tuneforge.models.loading",
    "tuneforge.tracking",
    "tuneforge.data.cases",
    "tuneforge.data.size",
    "tuneforge.cost.serving",
    "tuneforge.serve.protocol",
    "tuneforge.serve.settings",
    "tuneforge.serve.cli",
    "tuneforge.engines.base",
    "tuneforge.cost.report",
    "tuneforge.report_files",
    "tuneforge.cost.cli",
    "tuneforge.cost.commands",
    "tuneforge.cost.inputs",
    "tuneforge.cost.estimate_cli",
    "tuneforge.tables",
    "tuneforge.cli",
]


@pytest.mark.parametrize("module", PURE)
def test_module_imports_without_torch(module):
    code = f"import sys, {module}; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"
