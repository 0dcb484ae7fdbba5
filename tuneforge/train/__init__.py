"""Training stage: LoRA / QLoRA fine-tuning on transformers + PEFT, tracked in MLflow.

tuneforge train configs/demo-cpu.yaml          # resumes automatically from the last good checkpoint
tuneforge export runs/demo-cpu/adapter         # merge into the base model, in the base dtype
"""
