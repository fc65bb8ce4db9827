"""Membership inference: does a model give away which samples it was trained on."""
