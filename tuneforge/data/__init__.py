"""Dataset stage: read, validate, format, tokenize and split instruction data.

tuneforge data validate FILE      # every problem, with file, line and example id
tuneforge data prepare RECIPE     # tokenized train/validation splits + stats.json
tuneforge data stats RECIPE       # counts and token-length distribution
"""

from tuneforge.data.preprocessor import DatasetPreprocessor, LoadedDataset, PreparedData

__all__ = ["DatasetPreprocessor", "LoadedDataset", "PreparedData"]
