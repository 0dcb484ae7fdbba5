"""Per-token log-likelihoods from a causal LM, reduced into perplexity by tuneforge.eval.perplexity.

Batches are right-padded with an attention mask: in a causal model padding after a sequence cannot
change the logits of the positions before it, so batching does not change the result (a test checks
batch size 1 against 4). Instruction data is scored on the response tokens only (its labels), plain
text on every token after the first; text longer than the context is scored in sliding windows.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuneforge.data.templates import IGNORE_INDEX
from tuneforge.eval.perplexity import PerplexityAccumulator, sliding_windows


def _device(model):
    return next(model.parameters()).device


def score_batch(
    model, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int
) -> tuple[float, int]:
    """(sum of negative log-likelihoods, number of scored tokens) for one batch.

    labels[i][p] is the token expected at position p, or IGNORE_INDEX where nothing is scored; the
    prediction for position p comes from the logits at p - 1."""
    import torch

    width = max(len(ids) for ids in input_ids)
    device = _device(model)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for i, (row, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(row)] = torch.tensor(row_labels)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    target = lab[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(nll), int((target != IGNORE_INDEX).sum())


def dataset_perplexity(
    model,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    progress=None,
) -> PerplexityAccumulator:
    """Token-weighted perplexity over tokenized examples (their labels say which tokens count)."""
    acc = PerplexityAccumulator()
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))  # similar lengths: less padding
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        acc.add_sum(*score_batch(model, [input_ids[i] for i in batch], [labels[i] for i in batch], pad_id))
        if progress is not None:
            progress.update(len(batch))
    return acc


def text_perplexity(
    model, token_ids: Sequence[int], window: int, stride: int, pad_id: int = 0
) -> PerplexityAccumulator:
    """Perplexity of one long token sequence: every token after the first is scored exactly once, with up
    to `window` tokens of context (sliding windows with `stride`)."""
    acc = PerplexityAccumulator()
    for start, end, first in sliding_windows(len(token_ids), window, stride):
        ids = list(token_ids[start:end])
        labels = [IGNORE_INDEX if start + j < first else tok for j, tok in enumerate(ids)]
        acc.add_sum(*score_batch(model, [ids], [labels], pad_id))
    return acc
