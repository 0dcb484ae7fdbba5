"""tuneforge: from instruction data to a production endpoint.

Stages, one subpackage each: `tuneforge.data` (prepare), `tuneforge.train` (LoRA/QLoRA, MLflow),
`tuneforge.eval` (perplexity, task metrics, comparison); `tuneforge.models` resolves model references
and `tuneforge.engines` generates.
Importing this package imports no torch; heavy libraries load where they are used.
"""

__version__ = "0.1.0"
