"""The bottom layer, which imports nothing above it.

Validation, threat models and norm geometry, data tensors, run-folder files, fingerprints,
progress, formatting and the one registry decorator.
"""
