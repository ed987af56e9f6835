"""Continued pretraining: plain text, each document + eos, packed into blocks of data.max_length.

Example::

    medtune train examples/pt.yaml
"""

from __future__ import annotations

from medtune.recipes.recipe import Recipe


class PTRecipe(Recipe):
    """Every token learned; documents share blocks, isolated from each other by position ids."""

    def make_examples(self, cfg, tokenizer, records, stats):
        """Return pretraining pieces (every token learned) for ``records`` of shape text (with
        data.mixture, conversations too: their assistant tokens learned)."""
        if cfg.data.mixture != "none":
            from medtune.recipes.mixture import mixed_examples

            return mixed_examples(cfg, tokenizer, records, stats)
        from medtune.data.tokenize.examples import encode_texts

        d = cfg.data
        return encode_texts(tokenizer, (r["text"] for r in records), d.max_length, d.overlength, stats)
