"""Stage 3, evaluate: load the baseline rules (YAML) and run their checks over a snapshot's assets.

Pure and offline: checks see assets only, never an API.
"""
