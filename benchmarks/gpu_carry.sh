#!/usr/bin/env bash
# Build .gpu-carry/ (ignored by git) for a run on the lent GPU machine, which has torch, transformers, peft,
# accelerate, pyarrow and pyyaml but not omegaconf, datasets, dill or multiprocess:
#   - wheels for its Python 3.12;
#   - a Llama-2-7B-shaped model folder (config.json only, random weights at run time) with the embedded
#     default's tokenizer (vocab 49,152 instead of Llama-2's 32,000: +140M embedding parameters).
# Run here: bash benchmarks/gpu_carry.sh   then carry .gpu-carry with the run (see gpu_train_throughput.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-carry/wheels .gpu-carry/llama-2-7b-shape .git/info
grep -qx "/.gpu-carry/" .git/info/exclude 2>/dev/null || echo "/.gpu-carry/" >> .git/info/exclude
.venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d .gpu-carry/wheels \
    omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
tok=$(.venv/bin/python -c "from tuneforge.models.tiny import embedded_tokenizer_path as p; print(p())")
cp "$tok"/* .gpu-carry/llama-2-7b-shape/
cat > .gpu-carry/llama-2-7b-shape/config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu",
 "tie_word_embeddings": false, "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
 "dtype": "bfloat16"}
JSON
du -sh .gpu-carry
