"""Curriculum ordering: train easy -> hard instead of shuffled (Ziya TCM's SFT, ChatDoctor's stages).

``data.curriculum``:

- ``buckets``: each ``data.train`` file is a difficulty bucket, trained in the order listed
  (shuffled inside a bucket, with the run's seed);
- ``length``: shortest samples first (token count);
- ``perplexity``: lowest perplexity under the starting model first (one no-grad pass).

The trainer then keeps this order (a sequential sampler); every epoch repeats it. Example::

    medtune train sft.yaml data.curriculum=length
"""

from __future__ import annotations

import logging
import random

log = logging.getLogger("medtune")


def order_rows(cfg, rows, model, tokenizer):
    """Return ``rows`` (a datasets.Dataset) reordered easy -> hard as ``cfg.data.curriculum`` says."""
    how = cfg.data.curriculum
    if how == "buckets":
        keys = _bucket_keys(rows["bucket"], cfg.train.seed)
    elif how == "length":
        keys = list(rows["length"])
    elif how == "perplexity":
        keys = sample_losses(model, rows, tokenizer.pad_token_id, cfg.train.batch_size)
    else:
        raise ValueError(f"unknown curriculum {how!r}")
    order = sorted(range(len(rows)), key=lambda i: (keys[i], i))
    log.info("curriculum %s: %d samples ordered easy -> hard", how, len(order))
    return rows.select(order)


def _bucket_keys(buckets, seed: int) -> list[tuple[int, float]]:
    """Return sort keys putting bucket 0 first, with a seeded random order inside each bucket."""
    rng = random.Random(seed)
    return [(b, rng.random()) for b in buckets]


def sample_losses(model, rows, pad_token_id: int, batch_size: int) -> list[float]:
    """Return each row's mean token loss (log perplexity) under ``model``, computed without grad."""
    import torch

    from medtune.data.tokenize.examples import IGNORE, Collator

    collate = Collator(pad_token_id)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target.clamp(min=0), reduction="none")
            mask = (target != IGNORE).float()
            losses += (nll * mask).sum(1).div(mask.sum(1).clamp(min=1)).tolist()
    model.train(was_training)
    return losses
