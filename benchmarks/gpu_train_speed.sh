#!/usr/bin/env bash
# On the GPU machine (carry .gpu-carry, built here by benchmarks/gpu_carry.sh): tuneforge's trainer against
# the plain PEFT loop, every lever alone and combined. Each stage writes $OUT/train_<stage>.txt.
#   bash benchmarks/gpu_train_speed.sh fixed     # Llama-2-7B shape, seq 1024 x 4, r16 q,k,v,o (ANCHORS' setup)
#   bash benchmarks/gpu_train_speed.sh varied    # same model, lengths lognormal between 64 and 2048
#   bash benchmarks/gpu_train_speed.sh qlora     # QLoRA: Mistral-7B shape seq 2048; llama3-8b-qlora's settings
#   bash benchmarks/gpu_train_speed.sh qlora8b   # llama3-8b-qlora's settings with Liger, and planned for 24 GB
#   (qlora and qlora8b upcast embeddings, head and norms to fp32 as peft does: fp32=on, how they were measured)
#   bash benchmarks/gpu_train_speed.sh qlora-bf16  # the same with them kept in bf16 (tuneforge's default now)
#   bash benchmarks/gpu_train_speed.sh dropout   # the fixed setup at the shipped recipes' lora_dropout 0.05 vs 0
# Wheels are installed once per machine under /root/extra (kept while the machine stays warm).
set -uo pipefail
out=${OUT:-/tmp}
if [ ! -f /root/extra/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /root/extra \
        .gpu-carry/wheels/*.whl $(ls .gpu-carry/bnb/*.whl 2>/dev/null) && touch /root/extra/.done || exit 3
fi
export PYTHONPATH=/root/extra:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name(0))"
bench="python3 benchmarks/train_throughput.py --random-weights --synthetic --timeout 400"
qkvo=q_proj,k_proj,v_proj,o_proj
for stage in "$@"; do
    case $stage in
    fixed) $bench --model .gpu-carry/llama-2-7b-shape --seq 1024 --batch 4 --steps 10 --targets $qkvo \
        --variants "plain+gc,plain,ours:auto=off;gc=on;attn=sdpa,ours:gc=off;liger=off;compile=off,ours:gc=off;liger=on;compile=off,ours:gc=off;liger=off;compile=on,ours" ;;
    varied) $bench --model .gpu-carry/llama-2-7b-shape --lengths lognormal --seq 2048 --batch 4 --steps 10 \
        --warmup 5 --targets $qkvo --variants "plain+gc,plain,ours:compile=off,ours" ;;
    dropout) $bench --model .gpu-carry/llama-2-7b-shape --seq 1024 --batch 4 --steps 10 --targets $qkvo \
            --dropout 0.05 --variants "plain+gc,ours" 2>&1 | tee "$out/train_dropout_005.txt" | tail -6
        $bench --model .gpu-carry/llama-2-7b-shape --seq 1024 --batch 4 --steps 10 --targets $qkvo \
            --dropout 0 --variants "ours" ;;
    qlora) $bench --model .gpu-carry/mistral-7b-shape --seq 2048 --batch 1 --steps 6 --targets $qkvo \
            --variants "ours:qlora=on;fp32=on;gc=on;liger=off,ours:qlora=on;fp32=on;gc=on,ours:qlora=on;fp32=on" 2>&1 | tee "$out/train_qlora_mistral.txt" | tail -8
        $bench --model .gpu-carry/llama-3-8b-shape --seq 2048 --batch 4 --steps 4 --r 64 --dropout 0.1 \
            --targets all-linear --variants "ours:qlora=on;fp32=on;gc=on;liger=off,ours:qlora=on;fp32=on;mem=24" ;;
    qlora8b) $bench --model .gpu-carry/llama-3-8b-shape --seq 2048 --batch 4 --steps 3 --warmup 2 --r 64 \
            --dropout 0.1 --targets all-linear --variants "ours:qlora=on;fp32=on;gc=on,ours:qlora=on;fp32=on;mem=24" ;;
    qlora-bf16) $bench --model .gpu-carry/mistral-7b-shape --seq 2048 --batch 1 --steps 6 --targets $qkvo \
            --variants "ours:qlora=on;gc=on" 2>&1 | tee "$out/train_qlora_bf16_mistral.txt" | tail -4
        $bench --model .gpu-carry/llama-3-8b-shape --seq 2048 --batch 4 --steps 3 --warmup 2 --r 64 \
            --dropout 0.1 --targets all-linear --variants "ours:qlora=on;gc=on,ours:qlora=on;mem=24" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
    esac 2>&1 | tee "$out/train_$stage.txt" | grep -v "it/s\]" | tail -40
done
