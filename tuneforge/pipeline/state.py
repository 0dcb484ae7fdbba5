"""What `tuneforge run` remembers between attempts: each stage's inputs, outputs and time. Imports no torch.

The run folder's `pipeline.json` holds, per stage, a fingerprint of what it was run on (the recipe keys it
reads and the fingerprints of the stages before it), the files it wrote, when it finished and how long it
took. A stage is skipped on the next `run` only when all of these hold: it finished, its fingerprint is the
same (a changed recipe key re-runs the stages that read it and every stage after them), and the files it
wrote are still there (checked, not assumed). The file is written atomically after every stage, so a
SIGKILL at any moment leaves the last complete state.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError

STATE_FILE = "pipeline.json"
VERSION = 1


@dataclass
class StageRecord:
    fingerprint: str
    outputs: list[str] = field(default_factory=list)
    """Files or folders the stage wrote, relative to the run folder (each must exist to skip it)."""
    seconds: float = 0.0
    finished_at: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    """The stage's headline figures, for the report and the final summary."""


def fingerprint(settings: Any, upstream: Iterable[str] = ()) -> str:
    """A short hash of a stage's settings (anything JSON can write) and of the stages it builds on."""
    text = json.dumps({"settings": settings, "upstream": list(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PipelineState:
    folder: Path
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / STATE_FILE

    @classmethod
    def load(cls, folder: str | Path) -> PipelineState:
        """The state recorded in `folder`, or an empty one; a corrupt file says how to start over."""
        folder = Path(folder)
        state = cls(folder)
        if not state.path.is_file():
            return state
        try:
            data = json.loads(state.path.read_text())
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
            state.stages = {name: StageRecord(**rec) for name, rec in data["stages"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(
                f"{state.path}: not a pipeline state this version can read ({e}); delete it to run every "
                "stage again (finished checkpoints are kept and training resumes from them)"
            ) from None
        return state

    def save(self) -> None:
        """Write atomically: a kill mid-write leaves the previous file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        body = {"version": VERSION, "stages": {n: asdict(r) for n, r in self.stages.items()}}
        tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)

    def why_run(self, name: str, fp: str, exists: Callable[[Path], bool] | None = None) -> str | None:
        """None when stage `name` can be skipped, else the reason it runs."""
        rec = self.stages.get(name)
        if rec is None:
            return "not run yet"
        if rec.fingerprint != fp:
            return "its settings or an earlier stage changed"
        exists = exists or (lambda p: p.exists())
        missing = [o for o in rec.outputs if not exists(self.folder / o)]
        if missing:
            return f"its output {missing[0]} is gone"
        return None

    def finish(self, name: str, fp: str, outputs: list[str], seconds: float, summary: dict) -> None:
        self.stages[name] = StageRecord(fp, outputs, round(seconds, 2), time.time(), summary)
        self.save()

    def forget(self, name: str) -> None:
        """Drop a stage's record (before it re-runs, so a crash mid-stage never looks finished)."""
        if self.stages.pop(name, None) is not None:
            self.save()
