"""benchmarks/lora_kernel_tune.py's pure side: the JSON vLLM 0.26.0 reads, its file names, the shapes and the
search space (no GPU, no vLLM: the tuning itself runs on a CUDA machine)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO

PATH = REPO / "benchmarks" / "lora_kernel_tune.py"


@pytest.fixture(scope="module")
def tune():
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("lora_kernel_tune", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    new = set(sys.modules) - before
    assert not [m for m in new if m.split(".")[0] in ("vllm", "torch", "triton")]  # imports stay lazy
    return module


def vllm_lookup(config_data: dict, max_loras: int, num_slices: int, m: int, k: int, n: int) -> dict:
    """vLLM 0.26.0's get_lora_op_configs (vllm/lora/ops/triton_ops/utils.py), its slicing copied."""
    config_data = (
        config_data.get(str(max_loras))
        or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - max_loras))]
    )
    config_data = config_data[str(num_slices)]
    config_data = (
        config_data.get(str(m)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - m))]
    )
    config_data = (
        config_data.get(str(k)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - k))]
    )
    return config_data.get(str(n)) or config_data[min(config_data.keys(), key=lambda x: abs(int(x) - n))]


def shrink_cfg(block_m: int) -> dict:
    return {"block_m": block_m, "block_n": 16, "block_k": 64, "split_k": 16, "num_warps": 4, "num_ctas": 1,
            "num_stages": 2, "group_size_m": 8, "max_nreg": None}  # fmt: skip


def test_rows_nest_as_max_loras_slices_m_k_n_with_string_keys(tune):
    key = ("op", "max_loras", "num_slices", "m", "k", "n", "config")
    rows = [
        dict(zip(key, ("shrink", 2, 3, 64, 4096, 16, shrink_cfg(64)), strict=True)),
        dict(zip(key, ("shrink", 2, 3, 1, 4096, 16, shrink_cfg(16)), strict=True)),
        dict(zip(key, ("shrink", 2, 1, 1, 14336, 16, shrink_cfg(32)), strict=True)),
    ]
    tree = tune.nest_configs(rows)
    assert tree == json.loads(json.dumps(tree))  # JSON as is: every key a string, every leaf a dict
    assert list(tree) == ["2"] and sorted(tree["2"]) == ["1", "3"]
    assert list(tree["2"]["3"]) == ["1", "64"]  # m in ascending order
    assert tree["2"]["3"]["64"]["4096"]["16"] == shrink_cfg(64)
    assert tree["2"]["1"]["1"]["14336"]["16"]["block_m"] == 32

    def depth(node) -> int:
        return 1 + depth(next(iter(node.values()))) if "block_m" not in node else 0

    assert depth(tree) == 5
    # vLLM's own walk: exact keys, else the nearest (m 24 -> 1, 23 away; m 2048 -> 64)
    assert vllm_lookup(tree, 2, 3, 64, 4096, 16) == shrink_cfg(64)
    assert vllm_lookup(tree, 2, 3, 24, 4096, 16) == shrink_cfg(16)
    assert vllm_lookup(tree, 2, 3, 2048, 4096, 16) == shrink_cfg(64)
    assert vllm_lookup(tree, 1, 3, 1, 4096, 16) == shrink_cfg(16)  # max_loras: nearest key too
    for args in [(2, 3, 64, 4096, 16), (2, 3, 24, 4096, 16), (5, 1, 7, 14000, 8)]:
        assert tune.lookup(tree, *args) == vllm_lookup(tree, *args)


def test_file_names_follow_vllms_device_name_spelling(tune):
    name = "NVIDIA H200-NVL"  # spaces and '-' become '_'
    assert tune.gpu_file_stem(name) == "NVIDIA_H200_NVL"
    assert tune.config_file_name(name, "shrink", None) == "NVIDIA_H200_NVL_SHRINK.json"
    assert tune.config_file_name(name, "expand", True) == "NVIDIA_H200_NVL_EXPAND_TRUE.json"
    assert tune.config_file_name(name, "expand", False) == "NVIDIA_H200_NVL_EXPAND_FALSE.json"
    expand = {"block_m": 16, "block_n": 64, "block_k": 16, "num_warps": 4, "num_ctas": 1, "num_stages": 2}
    rows = [
        {"op": "shrink", "add_inputs": None, "max_loras": 2, "num_slices": 1, "m": 1, "k": 4096, "n": 16,
         "config": shrink_cfg(16)},
        {"op": "expand", "add_inputs": True, "max_loras": 2, "num_slices": 2, "m": 1, "k": 16, "n": 14336,
         "config": expand},
        {"op": "expand", "add_inputs": False, "max_loras": 2, "num_slices": 2, "m": 1, "k": 16, "n": 14336,
         "config": expand},
    ]  # fmt: skip
    files = tune.config_files(name, rows)
    assert sorted(files) == [f"NVIDIA_H200_NVL_{s}.json" for s in ("EXPAND_FALSE", "EXPAND_TRUE", "SHRINK")]
    assert files["NVIDIA_H200_NVL_EXPAND_TRUE.json"]["2"]["2"]["1"]["16"]["14336"] == expand
    assert "2" not in files["NVIDIA_H200_NVL_SHRINK.json"]["2"]  # shrink rows only in the shrink file


def test_merge_keeps_other_entries_and_replaces_configs_whole(tune):
    old = {"2": {"1": {"1": {"4096": {"16": {"block_m": 32, "extra": 1}}}, "8": {"4096": {"16": {"a": 1}}}}}}
    new = {"2": {"1": {"1": {"4096": {"16": {"block_m": 16}}}}}}
    merged = tune.merge_configs(old, new)
    assert merged["2"]["1"]["1"]["4096"]["16"] == {"block_m": 16}
    assert merged["2"]["1"]["8"]["4096"]["16"] == {"a": 1}


def test_mistral_shapes_and_a_modest_valid_search_space(tune):
    layers = tune.layer_shapes(4096, 14336, 4096, 1024)
    shapes = tune.kernel_shapes(layers, 16, [True])
    got = {(s["op"], s["num_slices"], s["k"], s["n"]): s["layers"] for s in shapes}
    assert got == {
        ("shrink", 3, 4096, 16): ["qkv_proj"],
        ("expand", 3, 16, 4096): ["qkv_proj"],
        ("shrink", 1, 4096, 16): ["o_proj"],
        ("expand", 1, 16, 4096): ["o_proj", "down_proj"],  # one config key for both
        ("shrink", 2, 4096, 16): ["gate_up_proj"],
        ("expand", 2, 16, 14336): ["gate_up_proj"],
        ("shrink", 1, 14336, 16): ["down_proj"],
    }
    need_shrink = {"block_m", "block_n", "block_k", "split_k", "num_warps", "num_ctas", "num_stages"}
    for m in (1, 8, 64, 256):
        cands = tune.shrink_candidates(m, 4096, 16)
        assert cands and all(need_shrink <= set(c) and c["block_k"] * c["split_k"] <= 4096 for c in cands)
        assert max(c["block_m"] for c in cands) == min(64, max(16, m))
        assert {c["block_n"] for c in cands} == {16}  # rank 16
        first = tune.first_phase(cands, "shrink")
        assert first and all((c["num_warps"], c["num_stages"]) == (4, 2) for c in first)
        expand = tune.expand_candidates(m, 4096, 16)
        assert all(
            {"block_m", "block_n", "block_k", "num_warps", "num_ctas", "num_stages"} <= set(c) for c in expand
        )
        assert {c["block_k"] for c in expand} == {16} and {c["num_stages"] for c in expand} == {2}
    plan = tune.plan(shapes, [1, 2, 4, 8, 16, 32, 64, 128, 256], 16, 4)
    assert plan["timed_configs"] < 4000 and plan["first_phase_compiles"] < 800
    assert tune.specialization(16, 16) == tune.specialization(256, 16) != tune.specialization(1, 16)


def test_plan_runs_without_a_gpu_and_model_config_sets_the_sizes(tune, tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 16,
                               "num_key_value_heads": 4, "num_hidden_layers": 24}))  # fmt: skip
    args = tune.parse_args(["--model-config", str(cfg), "--batches", "4,1,4"])
    assert (args.hidden, args.intermediate, args.q_size, args.kv_size, args.num_layers) == (
        2048,
        8192,
        2048,
        512,
        24,
    )
    assert args.batch_list == [1, 4]
    assert tune.main(["--plan"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "lora_kernel_tune" and result["shapes"] == 7
