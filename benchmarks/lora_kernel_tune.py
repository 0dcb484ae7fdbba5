"""Tune vLLM 0.26.0's multi-LoRA Triton kernels (shrink, expand) for one model shape on the GPU it runs on.

    python benchmarks/lora_kernel_tune.py --out DIR          # Mistral-7B shape, rank 16, max_loras 1, bf16
    python benchmarks/lora_kernel_tune.py --model-config path/to/config.json --rank 16 --out DIR
    python benchmarks/lora_kernel_tune.py --plan             # shapes and candidate counts only (no GPU)
    VLLM_TUNED_CONFIG_FOLDER=DIR vllm serve ...              # vLLM logs "Using tuned LoRA kernel configs"

Every (op, num_slices, m, k, n) that the model's LoRA layers launch (qkv_proj: 3 slices, gate_up_proj: 2,
o_proj and down_proj: 1) at each decode batch (m tokens, all on adapter 0) is timed with vLLM's default
config and a pruned grid: tile sizes at 4 warps / 2 stages first, then warps and stages for the best
--refine tiles. Each config runs inside a CUDA graph over --pool copies of the LoRA weights after an L2
flush (the weights are cold in a real decode step), through vLLM's own ops with its config lookup replaced.
Kernels compile ahead in --jobs worker processes (into Triton's disk cache). The winner must match the
default config's output (torch.allclose), else the default is kept. Writes {gpu}_SHRINK.json,
{gpu}_EXPAND_TRUE.json and {gpu}_EXPAND_FALSE.json keyed as vLLM 0.26.0's get_lora_op_configs looks them up
(max_loras there is lora_ids.size(0) = max_loras + 1), reads every entry back through that lookup, prints a
table, then a JSON line. Needs a CUDA GPU and vLLM 0.26.0: the ops' signatures change between releases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from itertools import product
from pathlib import Path

VLLM_VERSION = "0.26.0"
# Search spaces; candidates are pruned per shape (see shrink_candidates / expand_candidates).
SHRINK_SPACE = {
    "block_m": (16, 32, 64),
    "block_n": (16, 32),
    "block_k": (32, 64, 128, 256),
    "split_k": (1, 4, 8, 16, 32, 64),
    "num_warps": (4, 8),
    "num_stages": (2, 3, 4),
}
EXPAND_SPACE = {
    "block_m": (16, 32, 64),
    "block_n": (32, 64, 128, 256),
    "block_k": (16, 32, 64),  # pruned to <= the rank: {16} at rank 16
    "num_warps": (4, 8),
    "num_stages": (2, 3),
}
CONFIG_KEYS = (
    "block_m",
    "block_n",
    "block_k",
    "split_k",
    "num_warps",
    "num_stages",
    "num_ctas",
    "group_size_m",
)
DEFAULT_BATCHES = "1,2,4,8,16,32,64,128,256"


# ---- pure helpers (no torch, no vLLM) ----------------------------------------------------------------------


def next_pow2(x: int) -> int:
    return 1 << (max(1, x) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def gpu_file_stem(device_name: str) -> str:
    """torch.cuda.get_device_name() as vLLM's load_lora_op_config spells it in file names."""
    return device_name.replace(" ", "_").replace("-", "_")


def config_file_name(device_name: str, op: str, add_inputs: bool | None) -> str:
    stem = gpu_file_stem(device_name)
    return f"{stem}_EXPAND_{str(add_inputs).upper()}.json" if op == "expand" else f"{stem}_SHRINK.json"


def nest_configs(rows: list[dict]) -> dict:
    """config_data[max_loras][num_slices][m][k][n] = config, every key a string (vLLM indexes with str())."""
    tree: dict = {}
    for r in sorted(rows, key=lambda r: (r["max_loras"], r["num_slices"], r["m"], r["k"], r["n"])):
        node = tree
        for key in (r["max_loras"], r["num_slices"], r["m"], r["k"]):
            node = node.setdefault(str(int(key)), {})
        node[str(int(r["n"]))] = dict(r["config"])
    return tree


def config_files(device_name: str, rows: list[dict]) -> dict[str, dict]:
    """{file name: nested configs}; rows carry op ('shrink' | 'expand') and add_inputs (expand only)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[config_file_name(device_name, r["op"], r.get("add_inputs"))].append(r)
    return {name: nest_configs(group) for name, group in sorted(groups.items())}


def merge_configs(old: dict, new: dict, depth: int = 5) -> dict:
    """`old` with `new`'s entries on top; leaves (configs) sit `depth` levels down and are replaced whole."""
    out = dict(old)
    for key, value in new.items():
        if depth > 1 and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge_configs(out[key], value, depth - 1)
        else:
            out[key] = value
    return out


def lookup(config_data: dict, max_loras: int, num_slices: int, m: int, k: int, n: int) -> dict:
    """vLLM 0.26.0's get_lora_op_configs walk (exact string key, else the numerically nearest key)."""

    def pick(node: dict, x: int) -> dict:
        return node.get(str(x)) or node[min(node.keys(), key=lambda key: abs(int(key) - x))]

    node = pick(config_data, max_loras)[str(num_slices)]
    return pick(pick(pick(node, m), k), n)


def sizes_from_model_config(cfg: dict) -> dict:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return {
        "hidden": cfg["hidden_size"],
        "intermediate": cfg["intermediate_size"],
        "q_size": heads * head_dim,
        "kv_size": cfg.get("num_key_value_heads", heads) * head_dim,
        "layers": cfg.get("num_hidden_layers", 32),
    }


def layer_shapes(hidden: int, intermediate: int, q_size: int, kv_size: int) -> dict[str, tuple]:
    """Packed LoRA layer -> (input features, output slices), as vLLM 0.26.0 stacks them (TP 1)."""
    return {
        "qkv_proj": (hidden, (q_size, kv_size, kv_size)),  # MergedQKVParallelLinearWithLoRA
        "o_proj": (q_size, (hidden,)),  # RowParallelLinearWithLoRA
        "gate_up_proj": (hidden, (intermediate, intermediate)),  # MergedColumnParallelLinearWithLoRA
        "down_proj": (intermediate, (hidden,)),  # RowParallelLinearWithLoRA
    }


def kernel_shapes(layers: dict[str, tuple], rank: int, expand_add_inputs: list[bool]) -> list[dict]:
    """The distinct kernel launches, one per config key: shrink (k = input features, n = rank) and expand
    (k = rank, n = the widest slice); layers sharing a key (o_proj and down_proj's expand) share a shape."""
    shapes: dict[tuple, dict] = {}
    for name, (fin, out_slices) in layers.items():
        keys = [("shrink", None, len(out_slices), fin, rank, (fin,))]
        keys += [("expand", a, len(out_slices), rank, max(out_slices), out_slices) for a in expand_add_inputs]
        for op, add, slices, k, n, io in keys:
            shape = shapes.setdefault(
                (op, add, slices, k, n),
                {"op": op, "add_inputs": add, "num_slices": slices, "k": k, "n": n, "io": io, "layers": []},
            )
            shape["layers"].append(name)
    return list(shapes.values())


def shrink_candidates(m: int, k: int, rank: int, space: dict = SHRINK_SPACE) -> list[dict]:
    """block_m <= m (rounded up to a power of 2, at least 16), block_n <= rank (likewise), block_k * split_k
    <= k (else whole CTAs idle), more than the fewest stages only where the K loop runs that many times."""
    bms = [b for b in space["block_m"] if b <= max(16, next_pow2(m))] or [min(space["block_m"])]
    bns = [b for b in space["block_n"] if b <= max(16, next_pow2(rank))] or [min(space["block_n"])]
    out = []
    for bm, bn, bk, sk in product(bms, bns, space["block_k"], space["split_k"]):
        if bk * sk > k:
            continue
        iters = cdiv(k, bk * sk)
        for nw, ns in product(space["num_warps"], space["num_stages"]):
            if ns > min(space["num_stages"]) and ns > iters:
                continue
            out.append(
                {
                    "block_m": bm,
                    "block_n": bn,
                    "block_k": bk,
                    "split_k": sk,
                    "num_warps": nw,
                    "num_ctas": 1,
                    "num_stages": ns,
                    "group_size_m": 8,
                    "max_nreg": None,
                }
            )
    return out


def expand_candidates(m: int, n: int, rank: int, space: dict = EXPAND_SPACE) -> list[dict]:
    """block_m <= m (power of 2, at least 16), block_n <= n, block_k <= rank (at least 16, tl.dot's
    minimum), more than the fewest stages only where the K loop runs that many times."""
    bms = [b for b in space["block_m"] if b <= max(16, next_pow2(m))] or [min(space["block_m"])]
    bns = [b for b in space["block_n"] if b <= max(16, next_pow2(n))] or [min(space["block_n"])]
    bks = [b for b in space["block_k"] if b <= max(16, next_pow2(rank))] or [min(space["block_k"])]
    out = []
    for bm, bn, bk, nw, ns in product(bms, bns, bks, space["num_warps"], space["num_stages"]):
        if ns > min(space["num_stages"]) and ns > cdiv(rank, bk):
            continue
        out.append(
            {
                "block_m": bm,
                "block_n": bn,
                "block_k": bk,
                "num_warps": nw,
                "num_ctas": 1,
                "num_stages": ns,
                "max_nreg": None,
            }
        )
    return out


def candidates(shape: dict, m: int, rank: int) -> list[dict]:
    if shape["op"] == "shrink":
        return shrink_candidates(m, shape["k"], rank)
    return expand_candidates(m, shape["n"], rank)


def config_key(cfg: dict | None) -> tuple:
    return tuple(cfg.get(k) for k in CONFIG_KEYS) if cfg else ("default",)


def tile_key(cfg: dict) -> tuple:
    return (cfg["block_m"], cfg["block_n"], cfg["block_k"], cfg.get("split_k"))


def first_phase(cands: list[dict], op: str) -> list[dict]:
    """Tile sizes at the first warps / stages of the space (vLLM's defaults: 4 warps, 2 stages)."""
    space = SHRINK_SPACE if op == "shrink" else EXPAND_SPACE
    nw, ns = space["num_warps"][0], min(space["num_stages"])
    return [c for c in cands if c["num_warps"] == nw and c["num_stages"] == ns]


def second_phase(cands: list[dict], tiles: set[tuple]) -> list[dict]:
    """Every warps / stages choice for the given tiles."""
    return [c for c in cands if tile_key(c) in tiles]


def specialization(m: int, rank: int) -> tuple:
    """What Triton specializes on among the integer arguments that change with m (M and the m * rank
    strides): equal to 1, divisible by 16. Configs compiled for one m serve every m of the same class."""
    return tuple((v == 1, v % 16 == 0) for v in (m, m * rank))


def plan(shapes: list[dict], batches: list[int], rank: int, refine: int) -> dict:
    """Candidate counts and an upper bound on distinct compilations."""
    timed = compiles = 0
    for shape in shapes:
        classes: dict[tuple, set] = defaultdict(set)
        for m in batches:
            cands = candidates(shape, m, rank)
            first = first_phase(cands, shape["op"])
            tiles = {tile_key(c) for c in first[:refine]}  # the count, not which tiles
            second = [c for c in second_phase(cands, tiles) if c not in first]
            timed += 1 + len(first) + len(second)
            classes[specialization(m, rank)].update(config_key(c) for c in first)
        compiles += sum(len(v) for v in classes.values())
    return {"timed_configs": timed, "first_phase_compiles": compiles}


def parse_ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


# ---- GPU side: vLLM 0.26.0's ops -----------------------------------------------------------------------


class Runtime:
    """vLLM's lora_shrink / lora_expand with the ops' get_lora_op_configs replaced: it returns `config`
    (None: vLLM's own answer, its defaults since VLLM_TUNED_CONFIG_FOLDER is unset) and keeps the
    arguments of the last lookup, which are the keys vLLM reads the JSON files with."""

    def __init__(self):
        import torch
        import vllm.lora.ops.triton_ops.lora_expand_op as expand_mod
        import vllm.lora.ops.triton_ops.lora_shrink_op as shrink_mod
        import vllm.lora.ops.triton_ops.utils as utils
        from vllm.lora.ops.triton_ops import LoRAKernelMeta, lora_expand, lora_shrink

        self.torch, self.utils, self.Meta = torch, utils, LoRAKernelMeta
        self.shrink, self.expand = lora_shrink, lora_expand
        self.config: dict | None = None
        self.last: dict | None = None
        # _lora_shrink / _lora_expand read this module global at each call
        shrink_mod.get_lora_op_configs = self._configs
        expand_mod.get_lora_op_configs = self._configs

    def clear_pointer_tables(self) -> None:
        """vLLM caches weight pointers and strides by data_ptr: stale once weights are freed and reused."""
        self.utils._LORA_A_PTR_DICT.clear()
        self.utils._LORA_B_PTR_DICT.clear()

    def _configs(self, op_type, max_loras, batch, hidden_size, rank, num_slices, add_inputs=None, **kw):
        self.last = dict(
            op_type=op_type,
            max_loras=max_loras,
            batch=batch,
            hidden_size=hidden_size,
            rank=rank,
            num_slices=num_slices,
            add_inputs=add_inputs,
        )
        return self.config if self.config is not None else self.utils.get_lora_op_configs(**self.last)


class ShapeData:
    """One kernel shape's LoRA weights: `pool` copies, stacked as vLLM's layers stack them
    ((max_loras, 1, rank, in) for A, (max_loras, 1, out, rank) for B)."""

    def __init__(self, rt: Runtime, shape: dict, rank: int, max_loras: int, dtype, pool: int):
        torch = rt.torch
        self.shape, self.rank, self.dtype, self.pool = shape, rank, dtype, pool
        if shape["op"] == "shrink":
            fin = shape["io"][0]
            dims = [(rank, fin)] * shape["num_slices"]
            scale = fin**-0.5
        else:
            dims = [(out, rank) for out in shape["io"]]
            scale = rank**-0.5
        self.weights = [
            [(torch.randn(max_loras, 1, a, b, device="cuda") * scale).to(dtype) for a, b in dims]
            for _ in range(pool)
        ]


class Case:
    """A shape at m tokens: inputs, outputs and the LoRAKernelMeta that PunicaWrapperGPU builds (all tokens
    on LoRA 0; grid over max_loras + 1 LoRA slots, as with specialize_active_lora off, the default)."""

    def __init__(self, rt: Runtime, data: ShapeData, m: int, max_loras: int, max_tokens: int):
        torch = rt.torch
        self.rt, self.data, self.m, self.shape = rt, data, m, data.shape
        self.meta = rt.Meta.make(max_loras, max_tokens, device="cuda", captured_lora_counts=[max_loras + 1])
        self.meta.prepare_tensors(torch.zeros(m, dtype=torch.long, device="cuda"))
        self.args = self.meta.meta_args(m, False)
        slices, rank = self.shape["num_slices"], data.rank
        if self.shape["op"] == "shrink":
            self.x = torch.randn(m, self.shape["io"][0], device="cuda").to(data.dtype)
            self.out = torch.zeros(slices, m, rank, dtype=torch.float32, device="cuda")  # as add_lora_linear
        else:
            self.x = torch.randn(slices, m, rank, dtype=torch.float32, device="cuda")
            self.y0 = torch.randn(m, sum(self.shape["io"]), device="cuda").to(data.dtype)
            self.out = self.y0.clone()

    def call(self, i: int) -> None:
        if self.shape["op"] == "shrink":  # lora_shrink(inputs, lora_a_weights, output, *meta, scaling)
            self.rt.shrink(self.x, self.data.weights[i], self.out, *self.args, 1.0)
        else:  # lora_expand(inputs, lora_b_weights, output, *meta, offset_start, add_inputs)
            self.rt.expand(
                self.x,
                self.data.weights[i],
                self.out,
                *self.args,
                offset_start=0,
                add_inputs=self.shape["add_inputs"],
            )

    def output(self, config: dict | None):
        """The op's output with `config` (None: vLLM's default), on the first weight copy."""
        self.rt.config = config
        if self.shape["op"] == "expand":
            self.out.copy_(self.y0)
        self.call(0)
        self.rt.torch.cuda.synchronize()
        return self.out.clone()

    def reference(self):
        torch, ws = self.rt.torch, self.data.weights[0]
        if self.shape["op"] == "shrink":
            return torch.stack([self.x.float() @ w[0, 0].float().T for w in ws])
        y = torch.cat([self.x[s] @ w[0, 0].float().T for s, w in enumerate(ws)], dim=1)
        return (y + self.y0.float()).to(self.out.dtype) if self.shape["add_inputs"] else y.to(self.out.dtype)

    def close(self, a, b) -> bool:
        tol = 1e-2 if a.dtype == self.rt.torch.float32 else 6e-2  # benchmark_lora.py's tolerances
        return bool(self.rt.torch.allclose(a.float(), b.float(), rtol=tol, atol=tol))


_WORKER: dict = {}


def _worker_init() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    _WORKER["rt"] = Runtime()


def _precompile(job: dict) -> list[tuple]:
    """Worker process: launch each config once so that Triton compiles it into its disk cache."""
    rt = _WORKER["rt"]
    torch = rt.torch
    rt.clear_pointer_tables()
    data = ShapeData(rt, job["shape"], job["rank"], job["max_loras"], getattr(torch, job["dtype"]), 1)
    case = Case(rt, data, job["m"], job["max_loras"], job["m"])
    failed = []
    for cfg in job["configs"]:
        rt.config = cfg
        try:
            case.call(0)
            torch.cuda.synchronize()
        except Exception as e:  # a config that does not compile or run is skipped
            failed.append((config_key(cfg), f"{type(e).__name__}: {e}"[:300]))
    return failed


class Tuner:
    def __init__(self, args, shapes: list[dict], batches: list[int]):
        self.rt = Runtime()
        self.rt.clear_pointer_tables()  # every weight tensor below lives until the end: no stale entries
        torch = self.torch = self.rt.torch
        self.args, self.shapes, self.batches = args, shapes, batches
        self.dtype = getattr(torch, args.dtype)
        self.bad: set[tuple] = set()  # (shape index, specialization, config key) that failed in a worker
        self.errors: list[str] = []
        self.pool = None
        flush_bytes = max(
            2 * getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20), 64 << 20
        )
        self.cache = None if args.no_flush else torch.empty(flush_bytes, dtype=torch.int8, device="cuda")
        self.flush_us = 0.0
        if self.cache is not None:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.cache.zero_()
            self.flush_us = self._replay(g, reps=max(30, args.reps))
        torch.manual_seed(0)
        self.data = [ShapeData(self.rt, s, args.rank, args.max_loras, self.dtype, args.pool) for s in shapes]
        top = max(batches)
        self.cases = {
            (i, m): Case(self.rt, self.data[i], m, args.max_loras, top)
            for i in range(len(shapes))
            for m in batches
        }

    # timing: one CUDA graph of [L2 flush, pool calls]; the flush's own time is taken off
    def _replay(self, graph, reps: int) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        return statistics.median(times)

    def time(self, case: Case, config: dict | None) -> float | None:
        """µs per call of `config` (None: vLLM's default); None when it fails to compile or run."""
        torch = self.torch
        self.rt.config = config
        graph = None
        try:
            # compile (or load from Triton's cache) and fill vLLM's pointer tables outside the graph
            for i in range(self.args.pool):
                case.call(i)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                if self.cache is not None:
                    self.cache.zero_()
                for i in range(self.args.pool):
                    case.call(i)
            return max(self._replay(graph, self.args.reps) - self.flush_us, 0.0) / self.args.pool
        except Exception as e:  # a config that does not compile or run is skipped
            self.errors.append(f"{case.shape['op']} m={case.m} {config}: {type(e).__name__}: {e}"[:300])
            return None
        finally:
            del graph

    def precompile(self, tasks: list[tuple]) -> None:
        """Compile (shape index, m, config) tasks in worker processes, one m per Triton specialization."""
        if self.args.jobs <= 0 or not tasks:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        rep: dict[tuple, int] = {}
        groups: dict[tuple, list[dict]] = defaultdict(list)
        seen = set()
        for i, m, cfg in tasks:
            spec = (i, specialization(m, self.args.rank))
            key = (spec, config_key(cfg) if cfg else ("default", m))  # vLLM's default changes with m
            if key in seen:
                continue
            seen.add(key)
            groups[(i, m if cfg is None else rep.setdefault(spec, m))].append(cfg)
        jobs = []
        for (i, m), cfgs in groups.items():
            for j in range(0, len(cfgs), 8):
                jobs.append(
                    {
                        "shape": self.shapes[i],
                        "m": m,
                        "configs": cfgs[j : j + 8],
                        "i": i,
                        "rank": self.args.rank,
                        "max_loras": self.args.max_loras,
                        "dtype": self.args.dtype,
                    }
                )
        t0 = time.time()
        try:
            if self.pool is None:
                ctx = multiprocessing.get_context("spawn")
                self.pool = ProcessPoolExecutor(self.args.jobs, mp_context=ctx, initializer=_worker_init)
            for job, failed in zip(jobs, self.pool.map(_precompile, jobs), strict=True):
                spec = specialization(job["m"], self.args.rank)
                for key, err in failed:
                    self.bad.add((job["i"], spec, key))
                    self.errors.append(f"compile {job['shape']['op']} m={job['m']} {key}: {err}")
        except Exception as e:  # then the main process compiles as it goes
            log(f"precompile failed ({type(e).__name__}: {e}); compiling in this process")
            self.args.jobs = 0
        log(f"precompiled {sum(len(j['configs']) for j in jobs)} configs in {time.time() - t0:.0f} s")

    def expected_lookup(self, i: int, m: int) -> dict:
        """get_lora_op_configs' arguments as the 0.26.0 ops pass them (max_loras = lora_ids.size(0))."""
        s = self.shapes[i]
        return dict(
            op_type=s["op"],
            max_loras=self.args.max_loras + 1,
            batch=m,
            hidden_size=s["k"] if s["op"] == "shrink" else s["n"],
            rank=self.args.rank,
            num_slices=s["num_slices"],
            add_inputs=s["add_inputs"],
        )

    def failed(self, key: tuple, cfg: dict) -> bool:
        return (key[0], specialization(key[1], self.args.rank), config_key(cfg)) in self.bad

    def run(self) -> list[dict]:
        args, rank = self.args, self.args.rank
        keys = list(self.cases)
        results: dict[tuple, dict] = {}
        self.precompile([(i, m, None) for i, m in keys])
        for i, m in keys:  # vLLM's default config, and the lookup arguments vLLM uses for this launch
            self.rt.last = None
            us = self.time(self.cases[(i, m)], None)
            lookup_args = self.rt.last or self.expected_lookup(i, m)
            if lookup_args != self.expected_lookup(i, m):
                log(f"vLLM looks up {lookup_args}, not {self.expected_lookup(i, m)}: writing what vLLM reads")
            results[(i, m)] = {
                "default_us": us,
                "lookup": lookup_args,
                "timed": {},
                "default": dict(self.rt.utils.get_lora_op_configs(**lookup_args)),
            }
        cands = {key: candidates(self.shapes[key[0]], key[1], rank) for key in keys}
        for phase in (1, 2):
            todo = []
            for key in keys:
                timed = results[key]["timed"]
                if phase == 1:
                    pick = first_phase(cands[key], self.shapes[key[0]]["op"])
                else:  # the best `refine` distinct tiles of phase 1, with every warps / stages choice
                    tiles: list[tuple] = []
                    for _, cfg in sorted((v for v in timed.values() if v[0] is not None), key=lambda v: v[0]):
                        if tile_key(cfg) not in tiles:
                            tiles.append(tile_key(cfg))
                    pick = second_phase(cands[key], set(tiles[: args.refine]))
                todo += [(key, c) for c in pick if config_key(c) not in timed and not self.failed(key, c)]
            self.precompile([(k[0], k[1], c) for k, c in todo])
            t0 = time.time()
            for key, cfg in todo:
                if self.failed(key, cfg):
                    continue
                results[key]["timed"][config_key(cfg)] = (self.time(self.cases[key], cfg), cfg)
            log(f"phase {phase}: timed {len(todo)} configs in {time.time() - t0:.0f} s")
        return [self.finish(key, results[key]) for key in keys]

    def finish(self, key: tuple, res: dict) -> dict:
        """Re-time the winner against the default, check its output, keep the default unless it wins."""
        i, m = key
        case, shape = self.cases[key], self.shapes[i]
        timed = [(us, cfg) for us, cfg in res["timed"].values() if us is not None]
        best = min(timed, key=lambda t: t[0])[1] if timed else None
        default_us, tuned_us, config, note = res["default_us"], res["default_us"], res["default"], "default"
        if best is not None and res["default_us"] is not None:
            a, b = [], []
            for _ in range(3):  # alternate, so that drift hits both
                a.append(self.time(case, None))
                b.append(self.time(case, best))
            if None not in a and None not in b:
                default_us, best_us = statistics.median(a), statistics.median(b)
                tuned_us = default_us
                if best_us < default_us:
                    ref = case.output(None)
                    if case.close(case.output(best), ref):
                        config, tuned_us, note = best, best_us, "tuned"
                    else:
                        note = "tuned output differs from the default's: default kept"
        ref_ok = case.close(case.output(None), case.reference())
        lk = res["lookup"]
        k, n = (lk["hidden_size"], lk["rank"]) if shape["op"] == "shrink" else (lk["rank"], lk["hidden_size"])
        row = {
            "op": shape["op"],
            "add_inputs": shape["add_inputs"],
            "layers": shape["layers"],
            "num_slices": lk["num_slices"],
            "m": lk["batch"],
            "k": k,
            "n": n,
            "max_loras": lk["max_loras"],
            "default_us": _round(default_us),
            "tuned_us": _round(tuned_us),
            "speedup": round(default_us / tuned_us, 3) if default_us and tuned_us else None,
            "config": config,
            "default_config": res["default"],
            "tried": len(res["timed"]),
            "note": note,
            "default_matches_torch": ref_ok,
        }
        log(
            f"{row['op']:6} {'+'.join(shape['layers']):22} m={m:<4} {_us(default_us)} -> {_us(tuned_us)} µs"
            f" ({len(timed)} configs, {note})"
        )
        return row

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _us(x: float | None) -> str:
    return "   -" if x is None else f"{x:6.2f}"


def log(msg: str) -> None:
    print(f"[lora_kernel_tune] {msg}", file=sys.stderr, flush=True)


def file_rows(rows: list[dict], mode: str, batches: list[int], utils, guard: bool) -> list[dict]:
    """The entries to write: tuned rows; with --expand-add-inputs true|false the other expand file gets
    the same configs; with the guard, vLLM's default at m = 2 * max(batches) so that prefill batches past
    the tuned range keep vLLM's defaults instead of the largest decode batch's config."""
    out = [dict(r) for r in rows]
    if mode != "both":
        out += [{**r, "add_inputs": not r["add_inputs"]} for r in rows if r["op"] == "expand"]
    if guard:
        big = 2 * max(batches)
        for r in [r for r in out if r["m"] == max(batches)]:
            hidden, rank = (r["k"], r["n"]) if r["op"] == "shrink" else (r["n"], r["k"])
            add = r["add_inputs"] if r["op"] == "expand" else None
            default = utils.get_lora_op_configs(
                r["op"],
                max_loras=r["max_loras"],
                batch=big,
                hidden_size=hidden,
                rank=rank,
                num_slices=r["num_slices"],
                add_inputs=add,
            )
            out.append({**r, "m": big, "config": dict(default)})
    return out


def write_and_verify(out_dir: Path, device_name: str, entries: list[dict], utils) -> tuple[list[str], list]:
    """Write (merged with files already there), then read every entry back through vLLM's lookup."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, tree in config_files(device_name, entries).items():
        path = out_dir / name
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(merge_configs(old, tree), indent=2) + "\n")
        names.append(str(path))
    saved = os.environ.get("VLLM_TUNED_CONFIG_FOLDER")
    os.environ["VLLM_TUNED_CONFIG_FOLDER"] = str(out_dir)
    utils.load_lora_op_config.cache_clear()
    utils.get_lora_op_configs.cache_clear()
    wrong = []
    try:
        for e in entries:
            hidden, rank = (e["k"], e["n"]) if e["op"] == "shrink" else (e["n"], e["k"])
            got = utils.get_lora_op_configs(
                e["op"],
                max_loras=e["max_loras"],
                batch=e["m"],
                hidden_size=hidden,
                rank=rank,
                num_slices=e["num_slices"],
                add_inputs=e["add_inputs"] if e["op"] == "expand" else None,
            )
            if dict(got) != json.loads(json.dumps(e["config"])):
                wrong.append({k: e[k] for k in ("op", "add_inputs", "num_slices", "m", "k", "n")})
    finally:
        if saved is None:
            os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None)
        else:
            os.environ["VLLM_TUNED_CONFIG_FOLDER"] = saved
        utils.load_lora_op_config.cache_clear()
        utils.get_lora_op_configs.cache_clear()
    return names, wrong


def per_step(rows: list[dict], layers: dict[str, tuple], n_layers: int, batches: list[int]) -> list[dict]:
    """LoRA kernel time of one decode step (every layer's shrink + expand, add_inputs=True where tuned)."""
    out = []
    for m in batches:
        d = t = 0.0
        for name in layers:
            for op in ("shrink", "expand"):
                match = [r for r in rows if r["m"] == m and r["op"] == op and name in r["layers"]]
                match.sort(key=lambda r: r["add_inputs"] is not True)
                if match and match[0]["default_us"] and match[0]["tuned_us"]:
                    d, t = d + match[0]["default_us"], t + match[0]["tuned_us"]
        out.append({"m": m, "default_us": round(d * n_layers, 1), "tuned_us": round(t * n_layers, 1)})
    return out


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'op':7} {'layers':24} {'slices':>6} {'m':>5} {'k':>6} {'n':>6} {'default µs':>10} {'tuned µs':>9}"
    )
    print(head + f" {'speed-up':>8}  config (bm,bn,bk,sk,warps,stages)")
    for r in rows:
        c = r["config"]
        op = r["op"] if r["op"] == "shrink" else f"expand{'+' if r['add_inputs'] else '='}"
        cfg = (
            c["block_m"],
            c["block_n"],
            c["block_k"],
            c.get("split_k", "-"),
            c["num_warps"],
            c["num_stages"],
        )
        print(
            f"{op:7} {'+'.join(r['layers']):24} {r['num_slices']:>6} {r['m']:>5} {r['k']:>6} {r['n']:>6} "
            f"{_us(r['default_us']):>10} {_us(r['tuned_us']):>9} {r['speedup'] or '-':>8}  "
            f"{','.join(map(str, cfg))}{'' if r['note'] in ('tuned', 'default') else '  ' + r['note']}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--q-size", type=int, default=4096, help="heads * head_dim")
    p.add_argument("--kv-size", type=int, default=1024, help="KV heads * head_dim")
    p.add_argument("--num-layers", type=int, default=32, help="decoder layers (for the per-step sums)")
    p.add_argument("--model-config", help="a Hugging Face config.json: the sizes above from it")
    p.add_argument("--rank", type=int, default=16, help="max_lora_rank")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument(
        "--batches", default=DEFAULT_BATCHES, help="decode batches (tokens per step), comma-separated"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--out", default="lora-kernel-configs", help="folder for VLLM_TUNED_CONFIG_FOLDER")
    p.add_argument(
        "--expand-add-inputs",
        default="true",
        choices=["true", "false", "both"],
        help="expand variant(s) to time (true: vLLM's default path; false: VLLM_LORA_ENABLE_DUAL_STREAM);"
        " the other file gets the same configs",
    )
    p.add_argument("--refine", type=int, default=4, help="tiles whose warps / stages are searched")
    p.add_argument("--pool", type=int, default=16, help="weight copies per CUDA graph")
    p.add_argument("--reps", type=int, default=10, help="graph replays per config (median)")
    p.add_argument(
        "--jobs",
        type=int,
        default=max(1, min(15, (os.cpu_count() or 2) - 1)),
        help="processes compiling kernels ahead (0: compile as timed)",
    )
    p.add_argument("--no-flush", action="store_true", help="keep the L2 cache warm between graphs")
    p.add_argument(
        "--no-prefill-guard", action="store_true", help="write no vLLM-default entry at m = 2 * max(batches)"
    )
    p.add_argument("--plan", action="store_true", help="print shapes and candidate counts, then exit")
    args = p.parse_args(argv)
    if args.model_config:
        sizes = sizes_from_model_config(json.loads(Path(args.model_config).read_text()))
        args.hidden, args.intermediate = sizes["hidden"], sizes["intermediate"]
        args.q_size, args.kv_size, args.num_layers = sizes["q_size"], sizes["kv_size"], sizes["layers"]
    args.batch_list = parse_ints(args.batches)
    if not args.batch_list or min(args.batch_list) < 1:
        p.error("--batches: positive integers, comma-separated")
    args.add_inputs = {"true": [True], "false": [False], "both": [True, False]}[args.expand_add_inputs]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layers = layer_shapes(args.hidden, args.intermediate, args.q_size, args.kv_size)
    shapes = kernel_shapes(layers, args.rank, args.add_inputs)
    estimate = plan(shapes, args.batch_list, args.rank, args.refine)
    if args.plan:
        for s in shapes:
            print(
                f"{s['op']:6} add_inputs={s['add_inputs']} slices={s['num_slices']} k={s['k']} n={s['n']} "
                f"{'+'.join(s['layers'])}"
            )
        print(json.dumps({"benchmark": "lora_kernel_tune", "plan": estimate, "shapes": len(shapes)}))
        return 0
    if os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None):  # the baseline must be vLLM's defaults
        log("VLLM_TUNED_CONFIG_FOLDER unset for this run: the baseline is vLLM's default configs")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print(
            "lora_kernel_tune: no CUDA GPU here (torch.cuda.is_available() is False); it tunes vLLM's "
            "Triton LoRA kernels on the GPU it runs on",
            file=sys.stderr,
        )
        return 2
    try:
        import vllm
        import vllm.lora.ops.triton_ops.utils as utils
    except Exception as e:
        print(f"lora_kernel_tune: vLLM's LoRA ops do not import ({type(e).__name__}: {e})", file=sys.stderr)
        return 3
    if getattr(vllm, "__version__", "?") != VLLM_VERSION:
        log(f"vLLM {vllm.__version__} here, written against {VLLM_VERSION}: the ops' signatures may differ")
    t0 = time.time()
    gpu = torch.cuda.get_device_name()
    log(
        f"{gpu}: {len(shapes)} shapes x {len(args.batch_list)} batches, about {estimate['timed_configs']}"
        f" timed configs, {estimate['first_phase_compiles']} first-phase compilations, {args.jobs} jobs"
    )
    tuner = Tuner(args, shapes, args.batch_list)
    try:
        rows = tuner.run()
    finally:
        tuner.close()
    entries = file_rows(rows, args.expand_add_inputs, args.batch_list, utils, not args.no_prefill_guard)
    files, wrong = write_and_verify(Path(args.out), gpu, entries, utils)
    print_table(rows)
    steps = per_step(rows, layers, args.num_layers, args.batch_list)
    for s in steps:
        print(
            f"m={s['m']}: LoRA kernels per decode step ({args.num_layers} layers) "
            f"{s['default_us']} µs default -> {s['tuned_us']} µs tuned"
        )
    for err in tuner.errors[:10]:
        log(f"skipped: {err}")
    if wrong:
        log(f"vLLM's lookup does not return what was written for {wrong}")
    print(
        json.dumps(
            {
                "benchmark": "lora_kernel_tune",
                "gpu": gpu,
                "vllm": vllm.__version__,
                "dtype": args.dtype,
                "rank": args.rank,
                "max_loras": args.max_loras,
                "flush_us": round(tuner.flush_us, 1),
                "skipped_configs": len(tuner.errors),
                "rows": rows,
                "per_step": steps,
                "files": files,
                "lookup_ok": not wrong,
                "elapsed_s": round(time.time() - t0, 1),
                "out": str(args.out),
            }
        )
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
