"""One-stage domain adaptation: text and conversations in one stage, sampled by a schedule.

With ``data.mixture`` (constant | anneal) a pt or sft stage trains on every ``data.train`` entry
by share of samples: text entries learn every token, conversation entries their assistant
tokens only. :func:`mixed_examples` tokenizes either shape; :func:`schedule_rows` lays out the
whole run's samples (``medtune.data.schedule``) and the trainer keeps that order. The lineage's
``mixture`` records the samples each source gave per phase and per epoch. Example
(HuatuoGPT-II's shape: domain text first, then instructions)::

    stage: sft
    data:
      train: [corpus.jsonl, instructions.jsonl]
      mixture: anneal
      weights: [0.9, 0.1]        # first phase: 90% corpus
      final_weights: [0.2, 0.8]  # last phase: 80% instructions
"""

from __future__ import annotations

import logging

log = logging.getLogger("medtune")


def mixed_examples(cfg, tokenizer, records, stats) -> list[dict]:
    """Return training rows for ``records`` of either shape: text (every token learned, split into
    blocks of data.max_length) and conversations (assistant tokens learned)."""
    from medtune.data.readers.records import origin
    from medtune.data.tokenize.examples import encode_conversations, encode_texts
    from medtune.data.tokenize.spans import Conversation

    d = cfg.data
    texts = [r["text"] for r in records if "messages" not in r]
    chats = [Conversation(r["messages"], origin(r)) for r in records if "messages" in r]
    out = encode_texts(tokenizer, texts, d.max_length, d.overlength, stats) if texts else []
    if chats:
        out += encode_conversations(tokenizer, chats, d.max_length, d.overlength, d.train_on_prompt, stats,
                                    reasoning=d.reasoning)
    return out


def total_samples(cfg, n_rows: int, world_size: int = 1) -> int:
    """Samples the run trains: train.max_steps global batches, else train.epochs x ``n_rows``."""
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps * t.batch_size * t.grad_accum * max(1, world_size)
    return max(1, round(t.epochs * n_rows))


def schedule_rows(cfg, rows, files, world_size: int = 1):
    """Return ``(rows in training order, lineage record)`` for a data.mixture stage: ``rows`` (a
    datasets.Dataset with ``bucket``) expanded to the whole run's samples as the schedule draws them."""
    import numpy as np

    from medtune.data.schedule import mixture_order
    from medtune.errors import MedtuneError

    d = cfg.data
    buckets = np.asarray(rows["bucket"], dtype=np.int64)
    n_sources = len(d.train)
    by_bucket = np.argsort(buckets, kind="stable")  # rows laid out source after source
    counts = np.bincount(buckets, minlength=n_sources).tolist()
    for i, (entry, count) in enumerate(zip(d.train, counts)):
        if count == 0 and (d.weights[i] > 0 or (d.final_weights and d.final_weights[i] > 0)):
            raise MedtuneError(f"data.train entry '{entry}' left no training rows but has a weight > 0")
    total = total_samples(cfg, len(rows), world_size)
    plan = mixture_order(counts, d.weights, d.final_weights if d.mixture == "anneal" else None,
                         d.mixture_phases, total, cfg.train.seed, epoch_size=len(rows))
    names = list(d.train)
    record = {
        "schedule": d.mixture, "samples": total, "epoch_size": len(rows),
        "sources": [{"entry": name, "rows": count} for name, count in zip(names, counts)],
        "phases": [{"samples": p["samples"], "weights": dict(zip(names, p["weights"])),
                    "counts": dict(zip(names, p["counts"]))} for p in plan.phases],
        "epochs": [dict(zip(names, c)) for c in plan.epochs],
        "seen": dict(zip(names, np.bincount(plan.source_of, minlength=n_sources).tolist())),
    }
    log.info("mixture %s: %d samples over %d sources (%s)", d.mixture, total, n_sources,
             ", ".join(f"{n}: {k}" for n, k in record["seen"].items()))
    return rows.select(by_bucket[plan.order].tolist()), record
