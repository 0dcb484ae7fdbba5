"""Evaluation stage: perplexity, task metrics, and base-versus-fine-tuned comparison.

The math (perplexity from log-likelihoods, task metrics) lives in pure modules that import no torch.
"""
