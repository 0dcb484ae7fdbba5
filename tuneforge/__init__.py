"""tuneforge: from instruction data to a production endpoint.

Stages, one subpackage each: `tuneforge.data` (prepare), `tuneforge.models` (resolve and load).
Importing this package imports no torch; heavy libraries load where they are used.
"""

__version__ = "0.1.0"
