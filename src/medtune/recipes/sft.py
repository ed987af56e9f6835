"""Supervised fine-tuning on conversations; loss on assistant turns unless data.train_on_prompt.

Example::

    medtune train examples/sft_lora.yaml train.epochs=1
"""

from __future__ import annotations

SHAPES = ("messages",)
PACK_BY_DEFAULT = False  # data.packing: true opts in; it pays with FlashAttention varlen on GPU


def make_examples(cfg, tokenizer, records, stats):
    """Return ``{input_ids, labels}`` examples for conversation ``records``."""
    from medtune.data.tokenize.examples import encode_conversations

    d = cfg.data
    return encode_conversations(
        tokenizer, (r["messages"] for r in records), d.max_length, d.overlength, d.train_on_prompt, stats,
        reasoning=d.reasoning,
    )
