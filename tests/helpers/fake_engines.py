"""A stand-in generation engine for API tests: the serving surface without a model."""

from __future__ import annotations


class FakeEngine:
    """Serves one model ``name``; every chat prompt encodes to the same three ids and opens no
    reasoning trace. Subclasses say how they generate (and may record what they were asked)."""

    backend = "fake"
    name = "m"

    def model_names(self):
        return [self.name]

    def encode_chat(self, messages, model=None, enable_thinking=None):
        return [1, 2, 3]

    def opens_thinking(self, prompt_ids, model=None):
        return False
