"""Variable-length attention for padding-free packed batches, registered with transformers as "varlen".

    tuneforge train RECIPE model.attn_implementation=varlen     # the default for packed training on a GPU

A packed batch is one row of concatenated examples with cumulative lengths (`cu_seq_lens_q`, from
DataCollatorWithFlattening). Each example attends only to itself, and attention costs what the examples
cost separately. On CUDA this is torch's own flash-attention kernel for variable lengths
(`torch.nn.attention.varlen.varlen_attn`, torch >= 2.10; no flash-attn wheel needed); elsewhere, and on
older torch, each example goes through SDPA on its own (same result, slower). Batches without lengths
(padded, or generation) take transformers' SDPA path.
"""

from __future__ import annotations

import functools
import inspect
from itertools import pairwise

import torch

NAME = "varlen"


@functools.cache
def _torch_varlen():
    """torch's varlen_attn and the keyword that makes it causal (its signature moved between releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, {}
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    if "enable_gqa" in params:
        causal["enable_gqa"] = True
    return varlen_attn, causal


def _per_example(query, key, value, cu_seqlens, scaling):
    """SDPA over each packed example on its own: the reference path (CPU, or torch without varlen)."""
    outs = []
    bounds = cu_seqlens.tolist()
    gqa = query.shape[1] != key.shape[1]
    for start, end in pairwise(bounds):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))  # heads, len, dim
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa
        )
        outs.append(out.transpose(0, 1))
    return torch.cat(outs, dim=0)


def _causal_padding_mask(padding: torch.Tensor, q_len: int) -> torch.Tensor:
    """(batch, kv) padding mask -> (batch, 1, q, kv) boolean causal mask. transformers hands a registered
    attention without a mask function the raw 2D mask; each query also sees itself, so rows of padding
    never softmax over nothing."""
    kv_len = padding.shape[-1]
    ones = torch.ones(q_len, kv_len, dtype=torch.bool, device=padding.device)
    causal = ones.tril(kv_len - q_len)
    diagonal = causal & ~ones.tril(kv_len - q_len - 1)
    return (causal & padding[:, None, None, :].bool()) | diagonal


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: query (batch, heads, seq, dim) -> output (batch, seq, heads, dim)."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None or attention_mask is not None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = _causal_padding_mask(attention_mask, query.shape[2])
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # total tokens, heads, dim
    varlen_attn, causal = _torch_varlen()
    if varlen_attn is not None and q.is_cuda:
        max_len = kwargs.get("max_length_q")
        if max_len is None:
            max_len = int(cu_seqlens.diff().max())
        cu = cu_seqlens.to(torch.int32)
        # flash kernels take bf16/fp16 only; QLoRA's fp32 norms (peft's k-bit preparation) make fp32 q, k
        dtype = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = varlen_attn(
            *(t.to(dtype) for t in (q, k, v)), cu, cu, max_len, max_len, scale=scaling, **causal
        )
        out = out.to(query.dtype)
    else:
        out = _per_example(q, k, v, cu_seqlens, scaling)
    return out.unsqueeze(0), None


@functools.cache
def register() -> str:
    """Make "varlen" a valid attn_implementation. No mask function is registered: transformers then builds
    no 4D mask for packed rows (lengths carry the structure) and passes a padding mask through as it is."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    return NAME
