"""Perplexity from per-token log-likelihoods. Imports no torch.

Perplexity is token-weighted over everything evaluated: exp of the mean negative log-likelihood of all
scored tokens together, not a mean of per-example perplexities (which overweights short examples).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


class PerplexityAccumulator:
    """Adds up negative log-likelihoods and token counts across batches, windows and examples."""

    def __init__(self) -> None:
        self.nll_sum = 0.0
        self.tokens = 0

    def add(self, log_likelihoods: Iterable[float]) -> None:
        for ll in log_likelihoods:
            self.nll_sum -= ll
            self.tokens += 1

    def add_sum(self, nll_sum: float, tokens: int) -> None:
        """Add a batch already reduced to (sum of negative log-likelihoods, number of tokens)."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        self.nll_sum += nll_sum
        self.tokens += tokens

    @property
    def mean_nll(self) -> float:
        if self.tokens == 0:
            raise ValueError("no tokens were scored: perplexity is undefined")
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def perplexity(log_likelihoods: Sequence[float]) -> float:
    """exp(mean(-log_likelihood)) over the tokens given (natural-log likelihoods)."""
    acc = PerplexityAccumulator()
    acc.add(log_likelihoods)
    return acc.perplexity


def sliding_windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, end, first_scored) that score every position 1..length-1 exactly once.

    Each window sees up to `window` tokens of context; positions before `first_scored` in a window were
    scored by an earlier window and only serve as context (the Hugging Face perplexity recipe)."""
    if window < 2 or not 1 <= stride <= window:
        raise ValueError("need window >= 2 and 1 <= stride <= window")
    out, scored_to = [], 1  # position 0 has no context: it is never scored
    start = 0
    while scored_to < length:
        end = min(start + window, length)
        out.append((start, end, max(scored_to, start + 1)))
        scored_to = end
        if end == length:
            break
        start = min(start + stride, end - 1)  # keep one token of context for the next scored position
    return out
