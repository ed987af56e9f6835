"""Exports: adapters merged into full weights (``medtune export merge``)."""
