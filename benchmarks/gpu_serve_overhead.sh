#!/usr/bin/env bash
# serve_overhead.py on the lent GPU (H100): the calls, back to back while the machine stays warm.
# 1. here: bash benchmarks/gpu_serve_stage.sh
# 2. four runs, each carrying one piece (a carried folder does not outlive its run):
#    carry .stage/p1:  mkdir -p /root/stage && cp .stage/p1/* /root/stage/
#    carry .stage/p2:  cp .stage/p2/* /root/stage/
#    carry .stage/p3:  cp .stage/p3/* /root/stage/ && cd /root && cat stage/vllm.part* > vllm.tar.xz \
#                        && mkdir -p site && tar xJf vllm.tar.xz -C site \
#                        && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site stage/*.whl
#    carry .stage/p4:  bash benchmarks/gpu_serve_overhead.sh smollm2-135m
#    carry .stage/p4:  bash benchmarks/gpu_serve_overhead.sh mistral-7b
# Each installs tuneforge's missing wheels and runs the benchmark on one model shape (random weights).
set -euo pipefail
ls /root/site >/dev/null || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .stage/p4/wheels/*.whl
export PYTHONPATH=/root/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 TUNEFORGE_CACHE=/root/tf-cache
mkdir -p "$OUT"
python3 -c "import vllm.entrypoints.openai.api_server, tuneforge.serve.app"  # fail fast on a missing wheel
shape=${1:?usage: gpu_serve_overhead.sh smollm2-135m|mistral-7b}
python3 benchmarks/serve_overhead.py --model .stage/p4/$shape --load-format dummy --dtype bfloat16 \
    --max-model-len 2048 --concurrency 16 --requests 256 --warmup 32 --output-len 128 --log-dir "$OUT" \
    | tee "$OUT/serve_overhead-$shape.txt"
