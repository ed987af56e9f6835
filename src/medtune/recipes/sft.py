"""Supervised fine-tuning on conversations; loss on assistant turns unless data.train_on_prompt.

Rows are not packed unless data.packing: true (it pays with FlashAttention varlen on GPU). Example::

    medtune train examples/sft_lora.yaml train.epochs=1
"""

from __future__ import annotations

from medtune.recipes.recipe import Recipe


class SFTRecipe(Recipe):
    """Conversations through the chat template; the trainer and model are the defaults."""

    def make_examples(self, cfg, tokenizer, records, stats):
        """Return ``{input_ids, labels}`` examples for conversation ``records`` (with
        data.mixture, text records too: every token learned)."""
        if cfg.data.mixture != "none":
            from medtune.recipes.mixture import mixed_examples

            return mixed_examples(cfg, tokenizer, records, stats)
        from medtune.data.readers.records import origin
        from medtune.data.tokenize.examples import encode_conversations
        from medtune.data.tokenize.spans import Conversation

        d = cfg.data
        return encode_conversations(
            tokenizer, (Conversation(r["messages"], origin(r)) for r in records), d.max_length, d.overlength,
            d.train_on_prompt, stats, reasoning=d.reasoning,
        )
