"""Tokenization: chat templates, records -> training examples, packing."""
