#!/usr/bin/env bash
# On the GPU machine (carry .gpu-carry, built by benchmarks/gpu_carry.sh): the train_throughput benchmark on a
# Llama-2-7B-shaped model, the setup of the ANCHORS H100 row (LoRA r16 on q,k,v,o, seq 1024, batch 4,
# gradient checkpointing, bf16, random weights). Writes the output to $OUT/train_throughput_gpu.txt.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /root/extra .gpu-carry/wheels/*.whl
export PYTHONPATH=/root/extra:$PWD
python3 -c "import torch, transformers, peft, datasets; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name(0))"
python3 benchmarks/train_throughput.py --model .gpu-carry/llama-2-7b-shape --random-weights --synthetic \
    --seq 1024 --batch 4 --steps 10 --warmup 3 --rounds 2 --gradient-checkpointing \
    --targets q_proj,k_proj,v_proj,o_proj "$@" 2>&1 | grep -v "it/s\]" | tee "${OUT:-/tmp}/train_throughput_gpu.txt" | tail -12
