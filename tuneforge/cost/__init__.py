"""Cost stage: what a training run and a served model cost on cloud instances, and a pre-flight estimate.

    tuneforge cost instance p5.48xlarge --hours 3.5 --bench runs/bench/results.json
    tuneforge cost gpus --instance c7i.large --bench runs/bench/results.json   # + GPU estimates
    tuneforge estimate configs/llama3-8b-qlora.yaml

catalog.yaml holds instance prices (with dates and sources), GPU memory bandwidths and reference
throughputs; serving.py scales measured GPU serving throughputs to other GPUs and model sizes. Every module
here is pure and imports no torch.
"""
