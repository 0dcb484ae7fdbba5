"""Cost stage: what a training run and a served model cost on cloud instances, and a pre-flight estimate.

    tuneforge cost --instance p5.48xlarge --hours 3.5 --bench runs/bench/results.json
    tuneforge estimate configs/llama3-8b-qlora.yaml

catalog.yaml holds instance prices (with dates and sources) and reference throughputs; every module here
is pure and imports no torch.
"""
