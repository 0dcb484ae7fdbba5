"""Where every report (evaluation, benchmark, cost) is written: Markdown, self-contained HTML, JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(
    out_dir: str | Path, names: tuple[str, str, str], markdown: str, page: str, data: Any
) -> None:
    """Write `markdown`, `page` (HTML) and `data` (as JSON) under `out_dir` with the given three names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, html, js = names
    (out / md).write_text(markdown)
    (out / html).write_text(page)
    (out / js).write_text(json.dumps(data, indent=2, default=str) + "\n")
