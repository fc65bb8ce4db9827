"""The bottom layer: validation, threat models and norm geometry, data tensors, run-folder files,
fingerprints, progress, formatting and the one registry decorator. Imports nothing above it.
"""
