#!/usr/bin/env bash
# Build .gpu-carry/ (ignored by git) for a run on the lent GPU machine, which has torch, transformers, peft,
# accelerate, pyarrow and pyyaml but not omegaconf, datasets, dill, multiprocess, liger-kernel or bitsandbytes:
#   - wheels for its Python 3.12 (bitsandbytes, 43 MB, goes in its own folder: carry it only when needed);
#   - model folders of 7B/8B shapes (config.json only, random weights at run time) with the embedded
#     default's tokenizer (49,152 tokens; the random token ids are drawn from it).
# Run here: bash benchmarks/gpu_carry.sh   then carry .gpu-carry with the run (see gpu_train_speed.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-carry/wheels .gpu-carry/bnb .git/info
grep -qx "/.gpu-carry/" .git/info/exclude 2>/dev/null || echo "/.gpu-carry/" >> .git/info/exclude
dl() { .venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any "$@"; }
dl -d .gpu-carry/wheels omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 datasets==5.2.0 dill==0.4.1 \
    multiprocess==0.70.19 liger-kernel==0.8.5
dl -d .gpu-carry/bnb bitsandbytes==0.50.2
tok=$(.venv/bin/python -c "from tuneforge.models.tiny import embedded_tokenizer_path as p; print(p())")
shape() {  # name hidden intermediate kv_heads vocab rope_theta
    mkdir -p ".gpu-carry/$1" && cp "$tok"/* ".gpu-carry/$1/"
    cat > ".gpu-carry/$1/config.json" <<JSON
{"architectures": ["$7"], "model_type": "$8", "hidden_size": $2,
 "intermediate_size": $3, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": $4,
 "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": $6, "hidden_act": "silu",
 "tie_word_embeddings": false, "vocab_size": $5, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
 "dtype": "bfloat16"}
JSON
}
shape llama-2-7b-shape 4096 11008 32 49152 10000.0 LlamaForCausalLM llama
shape mistral-7b-shape 4096 14336 8 32768 1000000.0 MistralForCausalLM mistral
shape llama-3-8b-shape 4096 14336 8 128256 500000.0 LlamaForCausalLM llama
du -sh .gpu-carry/*
