"""One audit pipeline, plain and defended.

The plan (suite, eps grid, thresholds), the clean pass, the survivors chain, resume, sanity
checks, examples and the report. Plain and defended audits run through it.
"""
