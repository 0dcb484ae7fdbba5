"""Models: resolve a reference (embedded default, local folder or hub id) and load it.

tuneforge models prepare     # convert the embedded default once into the cache
"""
