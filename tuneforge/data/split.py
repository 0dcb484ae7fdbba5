"""Deterministic train/validation split. Imports no torch.

Each example goes to validation when a seeded hash of its content falls below the fraction. The
assignment of an example never depends on the others, so it is stable when examples are appended,
inserted or reordered, and exact duplicates always land on the same side (no leakage).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def split_score(content: Any, seed: int) -> float:
    """A number in [0, 1) fixed by the example's content and the seed."""
    payload = json.dumps(content, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{seed}\x00{payload}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_validation(contents: list[Any], fraction: float, seed: int) -> list[bool]:
    """True for the examples that go to validation.

    With a non-zero fraction and at least two examples, validation is never empty and never everything:
    the lowest-scoring example is moved in (or the highest moved out) so that training can still evaluate.
    """
    scores = [split_score(c, seed) for c in contents]
    chosen = [s < fraction for s in scores]
    if fraction > 0 and len(scores) >= 2:
        if not any(chosen):
            chosen[scores.index(min(scores))] = True
        if all(chosen):
            chosen[scores.index(max(scores))] = False
    return chosen
