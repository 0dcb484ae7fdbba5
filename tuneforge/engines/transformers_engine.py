"""Batched generation with transformers: the engine for machines without vLLM, and for tests."""

from __future__ import annotations

from collections.abc import Sequence

from tuneforge.config import SamplingParams


class TransformersEngine:
    """Generates for a batch of prompt strings in one padded batch per `batch_size` prompts.

    Prompts are left-padded (so every prompt ends where generation starts); temperature 0 is greedy.
    A prompt is tokenized without special tokens when it already carries them (a chat-template prompt)."""

    def __init__(self, model, tokenizer, batch_size: int = 8, name: str = "model"):
        self.model, self.tokenizer, self.batch_size, self.name = model.eval(), tokenizer, batch_size, name
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def generate(self, prompts: Sequence[str], sampling: SamplingParams) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(list(prompts[start : start + self.batch_size]), sampling))
        return out

    def _generate_batch(self, prompts: list[str], sampling: SamplingParams) -> list[str]:
        import torch

        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            has_bos = bool(tok.bos_token) and all(p.startswith(tok.bos_token) for p in prompts)
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not has_bos)
        finally:
            tok.padding_side = side
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs = {"max_new_tokens": sampling.max_tokens, "pad_token_id": tok.pad_token_id}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        with torch.no_grad():
            generated = self.model.generate(**enc, **kwargs)
        texts = tok.batch_decode(generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [_cut_at_stop(t, sampling.stop) for t in texts]


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (generation may run past it within a batch)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
