#!/usr/bin/env bash
# Stage what `benchmarks/serve_overhead.py` needs on the lent GPU machine (torch 2.11 cu130, no vLLM):
#   .stage/p1..p3  vLLM 0.26.0 and its missing dependencies (../shared/gpu/build_vllm_stage.sh);
#   .stage/p4      tuneforge's own missing dependencies (Python 3.12 wheels) and two model shapes
#                  (config.json + tokenizer only; the benchmark loads random weights, load_format=dummy):
#                  SmolLM2-135M (the embedded default) and Mistral-7B.
# Run here: bash benchmarks/gpu_serve_stage.sh   then see gpu_serve_overhead.sh for the calls.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && grep -qx "/.stage/" .git/info/exclude 2>/dev/null || echo "/.stage/" >> .git/info/exclude
[ -d .stage/p3 ] || bash ../shared/gpu/build_vllm_stage.sh .stage
mkdir -p .stage/p4/wheels .stage/p4/smollm2-135m .stage/p4/mistral-7b
.venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d .stage/p4/wheels \
    pydantic-settings==2.16.3 python-dotenv prometheus-client==0.26.0 omegaconf==2.4.0 \
    antlr4-python3-runtime==4.13.2 httpx==0.28.1 httpcore anyio idna certifi \
    httptools==0.9.0 `# uvicorn's C HTTP parser, for both servers` \
    httpx-sse==0.4.3 sse-starlette==3.7.0 rich==15.0.0 markdown-it-py mdurl pygments `# tables` \
    model-hosting-container-standards==0.1.16 jmespath supervisor `# vllm serve imports it` \
    py-spy==0.4.1  # stacks of a stalled engine (gpu_lora_start.py)
src=$(.venv/bin/python -c "from tuneforge.models.resolve import resolve_model as r; print(r('smollm2-135m-instruct').path)")
for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
    [ -f "$src/$f" ] && cp "$src/$f" .stage/p4/smollm2-135m/
    [ -f "$src/$f" ] && cp "$src/$f" .stage/p4/mistral-7b/
done
.venv/bin/python - <<'PY'
import json
path = ".stage/p4/mistral-7b/config.json"
vocab = json.load(open(path))["vocab_size"]  # the embedded tokenizer's vocabulary (49,152)
json.dump({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
           "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": False, "vocab_size": vocab,
           "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16", "sliding_window": None}, open(path, "w"))
PY
du -sh .stage/p*
