"""The one model loader (tuneforge.models.loading): revisions, adapters, QLoRA adapters, failures named."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.config import ModelConfig
from tuneforge.errors import ModelLoadError
from tuneforge.models.loading import (
    ADAPTER_META,
    adapter_quantization,
    load_base_model,
    load_with_adapter,
    tokenizer_for,
)


def test_a_hub_model_loads_at_the_recipes_revision(monkeypatch):
    # the hub is out of reach here: record what would be asked of it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    asked = {}

    def record(kind):
        def from_pretrained(path, **kwargs):
            asked[kind] = (path, kwargs)
            raise OSError("offline")

        return from_pretrained

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record("weights"))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", record("tokenizer"))
    cfg = ModelConfig(name_or_path="org/model", revision="v2.1", cache_dir="/tmp/hub-cache")
    with pytest.raises(ModelLoadError, match=r"'org/model'.*offline"):
        load_base_model(cfg)
    with pytest.raises(ModelLoadError, match="org/model"):
        tokenizer_for(cfg)
    assert asked["weights"][0] == "org/model"
    assert asked["weights"][1]["revision"] == "v2.1" and asked["weights"][1]["cache_dir"] == "/tmp/hub-cache"
    assert asked["tokenizer"][1]["revision"] == "v2.1"


def test_a_local_folder_loads_without_a_revision(tiny_model_dir):
    model = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir), revision="v9", dtype="float32"))
    assert model.config.model_type == "llama" and next(model.parameters()).dtype == torch.float32


def test_vllm_gets_the_revision_for_weights_and_tokenizer(tiny_model_dir):
    pytest.importorskip("vllm")
    from tuneforge.config import InferenceConfig
    from tuneforge.engines.vllm_engine import build_engine_args

    path, cfg = str(tiny_model_dir), InferenceConfig()
    args = build_engine_args(path, cfg, enable_lora=False, cpu=True, revision="abc123")
    assert (args.revision, args.tokenizer_revision) == ("abc123", "abc123")
    assert build_engine_args(path, cfg, enable_lora=False, cpu=True).revision is None


def test_an_adapter_is_merged_for_generation_and_gives_the_adapted_logits(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32")
    torch.manual_seed(0)
    adapted = get_peft_model(load_base_model(cfg), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # B starts at zero: make the adapter change something
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        base = load_base_model(cfg)(input_ids=ids).logits
        merged = load_with_adapter(cfg, tmp_path / "adapter", merge=True)
        unmerged = load_with_adapter(cfg, tmp_path / "adapter")
        assert not hasattr(merged, "peft_config") and hasattr(unmerged, "peft_config")
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(unmerged(input_ids=ids).logits, expected, atol=1e-5)
    assert not torch.allclose(base, expected, atol=1e-3)
    assert adapter_quantization(tmp_path / "adapter") is None  # not a QLoRA adapter: no tuneforge meta


def test_adapter_metadata_says_qlora_and_a_corrupt_one_is_named(tmp_path):
    (tmp_path / ADAPTER_META).write_text(json.dumps({"quantization": {"load_in_4bit": True}}))
    assert adapter_quantization(tmp_path) == {"load_in_4bit": True}
    (tmp_path / ADAPTER_META).write_text("{not json")
    with pytest.raises(ModelLoadError, match=f"{ADAPTER_META} is not valid JSON"):
        adapter_quantization(tmp_path)


def test_a_folder_that_is_not_an_adapter_is_named(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"cannot apply adapter .*empty"):
        load_with_adapter(ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32"), tmp_path / "empty")


def test_serve_takes_the_recipes_revision_for_the_recipes_model(tmp_path):
    from tuneforge.cli import build_parser
    from tuneforge.serve.cli import settings_from_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name_or_path: org/model\n  revision: v3\n")
    parse = build_parser().parse_args
    assert settings_from_args(parse(["serve", "--recipe", str(recipe)])).revision == "v3"
    other = settings_from_args(parse(["serve", "org/other", "--recipe", str(recipe)]))
    assert other.model == "org/other" and other.revision is None  # another model: not the recipe's revision
