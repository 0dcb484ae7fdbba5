"""LoRA room for a vLLM engine: sized to the adapters served from the start (engines/lora_slots.py)."""

import json

import pytest

from tuneforge.engines.lora_slots import RUNTIME_LORAS, RUNTIME_RANK, adapter_rank, lora_slots
from tuneforge.errors import ConfigError, ModelLoadError


def adapter(tmp_path, name, r, rank_pattern=None):
    folder = tmp_path / name
    folder.mkdir()
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r}
    if rank_pattern is not None:
        cfg["rank_pattern"] = rank_pattern
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return str(folder)


def test_one_adapter_gets_room_for_one_of_its_own_rank(tmp_path):
    assert lora_slots(None, None, [adapter(tmp_path, "a", 16)], runtime=False) == (1, 16)


def test_ranks_round_up_to_a_size_vllm_accepts_and_count_every_adapter(tmp_path):
    ads = [adapter(tmp_path, "a", 8), adapter(tmp_path, "b", 20), adapter(tmp_path, "c", 4)]
    assert lora_slots(None, None, ads, runtime=False) == (3, 32)
    assert lora_slots(None, None, [adapter(tmp_path, "d", 9)], runtime=False) == (1, 16)
    assert lora_slots(None, None, [adapter(tmp_path, "e", 64)], runtime=False) == (1, 64)
    assert lora_slots(None, None, [adapter(tmp_path, "f", 257)], runtime=False) == (1, 320)


def test_rank_pattern_counts_when_larger_than_r(tmp_path):
    ad = adapter(tmp_path, "a", 8, {"model.layers.0.self_attn.q_proj": 48})
    assert adapter_rank(ad) == 48
    assert lora_slots(None, None, [ad], runtime=False) == (1, 64)


def test_runtime_loading_or_no_adapter_known_keeps_the_wide_room(tmp_path):
    assert lora_slots(None, None, [], runtime=False) == (RUNTIME_LORAS, RUNTIME_RANK)
    assert lora_slots(None, None, [adapter(tmp_path, "a", 8)], runtime=True) == (RUNTIME_LORAS, RUNTIME_RANK)
    big = [adapter(tmp_path, f"b{i}", 128) for i in range(5)]
    assert lora_slots(None, None, big, runtime=True) == (5, 128)


def test_set_values_are_kept_and_checked_against_the_adapters(tmp_path):
    ad = adapter(tmp_path, "a", 32)
    assert lora_slots(2, 64, [ad], runtime=False) == (2, 64)
    assert lora_slots(None, 32, [ad], runtime=False) == (1, 32)
    with pytest.raises(ConfigError, match=r"max_lora_rank=16.*rank 32.*>= 32"):
        lora_slots(None, 16, [ad], runtime=False)


def test_too_large_a_rank_and_unreadable_adapters_are_named(tmp_path):
    with pytest.raises(ConfigError, match="above vLLM's largest"):
        lora_slots(None, None, [adapter(tmp_path, "a", 1024)], runtime=False)
    with pytest.raises(ModelLoadError, match="not found"):
        adapter_rank(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"adapter_config.json: no readable LoRA rank"):
        adapter_rank(bad)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ModelLoadError, match="'r'"):
        adapter_rank(bad)


def test_vllm_engine_args_get_the_sized_room(tmp_path, tiny_model_dir):
    pytest.importorskip("vllm")
    from tuneforge.config import InferenceConfig
    from tuneforge.engines.vllm_engine import build_engine_args

    ad, model = adapter(tmp_path, "a", 16), str(tiny_model_dir)
    args = build_engine_args(model, InferenceConfig(), enable_lora=True, cpu=True, adapters=[ad])
    assert (args.max_loras, args.max_lora_rank) == (1, 16)
    args = build_engine_args(
        model, InferenceConfig(), enable_lora=True, cpu=True, adapters=[ad], runtime_adapters=True
    )
    assert (args.max_loras, args.max_lora_rank) == (RUNTIME_LORAS, RUNTIME_RANK)
    args = build_engine_args(model, InferenceConfig(max_lora_rank=32), enable_lora=True, cpu=True)
    assert (args.max_loras, args.max_lora_rank) == (RUNTIME_LORAS, 32)


# -- shipped LoRA kernel configs (VLLM_TUNED_CONFIG_FOLDER)
MISTRAL = {"hidden_size": 4096, "intermediate_size": 14336}
SMOL = {"hidden_size": 576, "intermediate_size": 1536}


def _model(tmp_path, config: dict):
    import json

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_shipped_kernel_configs_match_the_7b_8b_shape_only_and_are_what_vllm_reads():
    import json

    from tuneforge.engines.lora_slots import tuned_kernel_folder

    folder = tuned_kernel_folder(MISTRAL)
    assert folder is not None and tuned_kernel_folder(SMOL) is None
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "NVIDIA_H200_EXPAND_FALSE.json",
        "NVIDIA_H200_EXPAND_TRUE.json",
        "NVIDIA_H200_SHRINK.json",
    ]
    shrink = json.loads((folder / "NVIDIA_H200_SHRINK.json").read_text())
    # vLLM indexes config[max_loras][num_slices][m][k][n]: k is the hidden size, n the rank, for shrink
    for slices in shrink["2"].values():
        assert "1" in slices and "64" in slices
        assert {"4096"} <= set(slices["1"]) and set(slices["1"]["4096"]) == {"16"}


def test_kernel_config_env_keeps_the_users_folder_and_follows_the_model_otherwise(tmp_path):
    from tuneforge.engines.lora_slots import (
        TUNED_ENV,
        kernel_config_env,
        tuned_kernel_folder,
    )

    mistral, smol = _model(tmp_path / "m", MISTRAL), _model(tmp_path / "s", SMOL)
    mine = kernel_config_env(mistral, {TUNED_ENV: "/mine"})
    assert TUNED_ENV not in mine and "TUNEFORGE_SET_" + TUNED_ENV not in mine  # the user's own configs win
    ours = kernel_config_env(mistral, {})
    assert ours[TUNED_ENV] == str(tuned_kernel_folder(MISTRAL)) and ours["TUNEFORGE_SET_" + TUNED_ENV] == "1"
    # a later engine for another shape in the same process drops what we set, not a user's value
    later = kernel_config_env(smol, {**ours})
    assert later[TUNED_ENV] is None and later["TUNEFORGE_SET_" + TUNED_ENV] is None
    missing = kernel_config_env(tmp_path / "missing", {})
    assert missing[TUNED_ENV] is None and missing["TUNEFORGE_SET_" + TUNED_ENV] is None


def test_kernel_config_env_turns_dual_stream_on_for_cuda_only_and_keeps_the_users_choice(tmp_path):
    from tuneforge.engines.lora_slots import DUAL_STREAM_ENV, kernel_config_env

    mistral = _model(tmp_path / "m", MISTRAL)
    on = kernel_config_env(mistral, {}, cuda=True)
    assert on[DUAL_STREAM_ENV] == "1" and on["TUNEFORGE_SET_" + DUAL_STREAM_ENV] == "1"
    # vLLM refuses dual streams off CUDA: a CPU engine after a GPU one in the same process unsets ours
    off = kernel_config_env(mistral, {**on}, cuda=False)
    assert off[DUAL_STREAM_ENV] is None and off["TUNEFORGE_SET_" + DUAL_STREAM_ENV] is None
    # a user's own value, "0" included, is never touched
    assert DUAL_STREAM_ENV not in kernel_config_env(mistral, {DUAL_STREAM_ENV: "0"}, cuda=True)
    assert DUAL_STREAM_ENV not in kernel_config_env(mistral, {DUAL_STREAM_ENV: "1"}, cuda=False)
