"""`tuneforge run`: the stages composed into one resumable pipeline (state, stages, run, report)."""
