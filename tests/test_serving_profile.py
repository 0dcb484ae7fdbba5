"""`inference.profile`: what the latency profile turns on, on which machine, and that it never overrides
what the recipe sets (engines/serving_profile.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.config import InferenceConfig
from tuneforge.engines.serving_profile import Checkpoint, Device, plan_inference
from tuneforge.errors import ConfigError

H200 = Device((9, 0), "NVIDIA H200")
L40S = Device((8, 9), "NVIDIA L40S")
A100 = Device((8, 0), "NVIDIA A100-SXM4-80GB")
CPU = Device()
MISTRAL_7B = Checkpoint(hidden_size=4096)
SMOLLM2_135M = Checkpoint(hidden_size=576)


def test_throughput_profile_serves_the_settings_as_given():
    cfg = InferenceConfig()
    assert plan_inference(cfg, H200) == (cfg, [])


@pytest.mark.parametrize(("device", "fp8"), [(H200, True), (L40S, True), (A100, False), (CPU, False)])
def test_latency_profile_uses_fp8_weights_only_where_the_gpu_has_fp8_tensor_cores(device, fp8):
    planned, reasons = plan_inference(InferenceConfig(profile="latency"), device, MISTRAL_7B)
    assert planned.quantization == ("fp8" if fp8 else None)
    assert planned.speculative is None and planned.kv_cache_dtype == "auto"  # measured: no gain
    # a 7B model on any CUDA GPU: Triton attention (no per-step metadata on the host); on CPU vLLM's own
    assert planned.attention_backend == ("auto" if device is CPU else "TRITON_ATTN")
    assert any(r.startswith("attention: vLLM's Triton") for r in reasons) is (device is not CPU)
    assert any(r.startswith("speculative decoding: off") for r in reasons)
    weights = next(r for r in reasons if r.startswith("weights"))
    assert ("FP8" in weights) and (device.name in weights or device is CPU)
    if device is A100:
        assert "8.0" in weights and "no FP8" in weights


SIZES = [(MISTRAL_7B, True), (Checkpoint(hidden_size=8192), True), (Checkpoint(hidden_size=4095), False),
         (SMOLLM2_135M, False), (Checkpoint(), False)]  # fmt: skip


@pytest.mark.parametrize(("checkpoint", "triton"), SIZES)
def test_triton_attention_only_for_models_of_the_size_it_was_measured_faster_on(checkpoint, triton):
    planned, reasons = plan_inference(InferenceConfig(profile="latency"), H200, checkpoint)
    assert planned.attention_backend == ("TRITON_ATTN" if triton else "auto")
    attention = next(r for r in reasons if r.startswith("attention: "))
    if triton:
        assert "1.05x" in attention and "FLASH_ATTN" in attention  # the gain, and how to turn it back
    else:  # says why, with the size it read
        assert "vLLM's choice" in attention and "0.88x" in attention
        assert f"hidden size {checkpoint.hidden_size or 'unknown'}" in attention


@settings(max_examples=100, deadline=None)
@given(
    quant=st.none() | st.sampled_from(["fp8", "awq", "gptq", "bitsandbytes"]),
    spec=st.none() | st.integers(1, 16),
    cap=st.none() | st.tuples(st.integers(7, 10), st.integers(0, 9)),
    backend=st.sampled_from(["auto", "machete", "triton"]),
    stored=st.none() | st.sampled_from(["gptq", "awq", "compressed-tensors", "fp8"]),
    attention=st.sampled_from(["auto", "FLASH_ATTN", "FLASHINFER"]),
    hidden=st.none() | st.integers(64, 16384),
)
def test_latency_profile_never_overrides_what_the_recipe_sets(
    quant, spec, cap, backend, stored, attention, hidden
):
    cfg = InferenceConfig(
        profile="latency",
        quantization=quant,
        speculative=None if spec is None else "ngram",
        speculative_tokens=spec or 4,
        linear_backend=backend,
        attention_backend=attention,
    )
    planned, reasons = plan_inference(cfg, Device(cap, "gpu") if cap else CPU, Checkpoint(stored, hidden))
    if quant is not None or stored is not None:  # the recipe's, or the checkpoint's own: never FP8 on top
        assert planned.quantization == quant
    else:
        assert planned.quantization == ("fp8" if cap is not None and cap >= (8, 9) else None)
    assert planned.speculative == (None if spec is None else "ngram")
    assert planned.speculative_tokens == (spec or 4)
    gptq_awq = (quant or stored) in ("gptq", "awq") and cap is not None and cap >= (8, 0)
    assert planned.linear_backend == ("marlin" if gptq_awq and backend == "auto" else backend)
    gpu = cap is not None
    large = hidden is not None and hidden >= 4096
    assert planned.attention_backend == (
        "TRITON_ATTN" if gpu and large and attention == "auto" else attention
    )
    # one reason per choice: weights, (GPTQ/AWQ kernels,) (attention, on a GPU,) speculative decoding
    assert len(reasons) == 2 + gptq_awq + gpu
    assert planned.profile == "latency" and planned.dtype == cfg.dtype


@pytest.mark.parametrize(("device", "marlin"), [(H200, True), (A100, True), (CPU, False)])
def test_a_gptq_checkpoint_keeps_its_weights_and_gets_marlin_kernels_on_a_gpu(device, marlin):
    planned, reasons = plan_inference(InferenceConfig(profile="latency"), device, Checkpoint("gptq"))
    assert planned.quantization is None  # vLLM reads the checkpoint's own; FP8 would clash with it
    assert reasons[0] == "weights: as stored, already quantized (gptq)"
    assert planned.linear_backend == ("marlin" if marlin else "auto")
    assert any("Marlin" in r for r in reasons) is marlin
    # the throughput profile leaves vLLM's own kernel choice alone
    assert plan_inference(InferenceConfig(), device, Checkpoint("gptq"))[0].linear_backend == "auto"


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("profile", "latancy", "latency"),
        ("kv_cache_dtype", "fp9", "fp8"),
        ("speculative", "ngrams", "ngram"),
        ("linear_backend", "marlim", "marlin"),
        ("attention_backend", "TRITON_ATN", "TRITON_ATTN"),
    ],
)
def test_bad_serving_options_are_named_with_a_suggestion(key, value, hint):
    with pytest.raises(ConfigError, match=rf"{key}: '{value}' is not one of .*did you mean '{hint}'"):
        InferenceConfig(**{key: value})


def test_speculative_tokens_must_be_in_range():
    with pytest.raises(ConfigError, match="speculative_tokens: must be in \\[1, 16\\], got 0"):
        InferenceConfig(speculative="ngram", speculative_tokens=0)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"quantization": "fp8"}, "inference.quantization=fp8 needs the vLLM engine"),
        ({"kv_cache_dtype": "fp8"}, "inference.kv_cache_dtype=fp8 needs the vLLM engine"),
        ({"speculative": "ngram"}, "inference.speculative=ngram needs the vLLM engine"),
        ({"linear_backend": "marlin"}, "inference.linear_backend=marlin needs the vLLM engine"),
        ({"stream_interval": 8}, "inference.stream_interval=8 needs the vLLM engine"),
        (
            {"attention_backend": "TRITON_ATTN"},
            "inference.attention_backend=TRITON_ATTN needs the vLLM engine",
        ),
    ],
)
def test_the_transformers_engine_refuses_vllm_only_options_before_loading(setting, message):
    from tuneforge.engines.select import start_engine

    cfg = InferenceConfig(engine="transformers", **setting)
    with pytest.raises(ConfigError, match=message):
        start_engine("no-such-model-is-loaded", cfg)


def test_the_checkpoints_quantization_and_hidden_size_are_read_from_its_config(tmp_path):
    from tuneforge.engines.vllm_engine import read_checkpoint

    configs = {
        "gptq": {"quantization_config": {"quant_method": "gptq", "bits": 4}, "hidden_size": 4096},
        "plain": {"model_type": "llama", "hidden_size": 576},
        "multimodal": {"text_config": {"hidden_size": 5120}},
        "odd": {"hidden_size": "4096", "quantization_config": "gptq"},  # wrong types: unknown
        "flag": {"hidden_size": True},
    }
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    read = {p.name: read_checkpoint(str(p)) for p in tmp_path.iterdir()}
    assert read["gptq"] == Checkpoint("gptq", 4096)
    assert read["plain"] == Checkpoint(None, 576)
    assert read["multimodal"] == Checkpoint(None, 5120)
    assert read["odd"] == read["flag"] == Checkpoint()
    assert read["corrupt"] == read["list"] == Checkpoint()  # vLLM itself reports a broken config
    assert read_checkpoint(str(tmp_path / "missing")) == Checkpoint()
