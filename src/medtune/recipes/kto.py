"""KTO: learn from answers labelled desirable or undesirable, no pairs needed.

Reads ``kto`` data (``{prompt, completion, label}``) or preference data split into a desirable
(chosen) and an undesirable (rejected) example. The reference point is KTO's KL estimate: the
policy/reference log-ratio of mismatched prompt/answer pairs (each example's prompt with the answer
of its neighbour, rotated by one as TRL's KTOTrainer does), mean over the batch, clamped at 0,
no gradient. ``preference.desirable_weight`` / ``undesirable_weight`` weigh the two kinds.

Example::

    medtune train kto.yaml   # stage: kto, data.train: [feedback.jsonl]  ({prompt, completion, label})
"""

from __future__ import annotations

from medtune.recipes import preference as pref

SHAPES = ("kto", "preference")
PACK_BY_DEFAULT = False


def unpaired(records) -> list[tuple[list, list, bool]]:
    """Return ``(prompt, completion, desirable)`` examples; preference pairs give all chosen first,
    then all rejected, so the rotation by one pairs each answer with another prompt."""
    if records and "completion" in records[0]:
        return [(r["prompt"], r["completion"], bool(r["label"])) for r in records]
    chosen = [(r["prompt"], r["chosen"], True) for r in records]
    return chosen + [(r["prompt"], r["rejected"], False) for r in records]


def make_examples(cfg, tokenizer, records, stats):
    """Return rows ``{input_ids, labels, kl_input_ids, kl_labels, desirable, length}``.

    ``kl_*`` is the example's prompt with the previous example's answer (mismatched pair).
    """
    import dataclasses

    pref.check_data_options(cfg)
    examples = unpaired(records)
    kl_data = dataclasses.replace(cfg.data, overlength="truncate")  # a long neighbour answer is cut, not skipped
    rows = []
    for i, (prompt, completion, desirable) in enumerate(examples):
        ids, labels, note = pref.encode_answer(tokenizer, prompt, completion, cfg.data)
        kl_ids, kl_labels, kl_note = pref.encode_answer(tokenizer, prompt, examples[i - 1][1], kl_data)
        reason = pref.skip_reason(note, kl_note)
        if reason:
            stats.skip(reason)
            continue
        stats.truncated += note == "truncated"
        rows.append({"input_ids": ids, "labels": labels, "kl_input_ids": kl_ids, "kl_labels": kl_labels,
                     "desirable": desirable, "length": max(len(ids), len(kl_ids))})
    pref.count_tokens(stats, rows, ("labels",))
    return rows


class KTOCollator:
    """Pad examples and their mismatched pairs to one width: examples in rows ``[:B]``, pairs in ``[B:]``."""

    def __init__(self, pad_token_id: int):
        from medtune.data.tokenize.examples import Collator

        self.pad = Collator(pad_token_id)

    def __call__(self, features):
        import torch

        rows = [{"input_ids": f[f"{p}input_ids"], "labels": f[f"{p}labels"]}
                for p in ("", "kl_") for f in features]
        desirable = torch.tensor([bool(f["desirable"]) for f in features])
        return {**self.pad(rows), "desirable": desirable, **pref.reference_columns(features)}


class KTOTrainer(pref.ReferenceMixin, pref.PreferenceTrainer):
    """Examples forwarded with gradients, their mismatched pairs without; reference as in DPO."""

    def __init__(self, *args, reference: str, incremental: bool, desirable_weight: float,
                 undesirable_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights = desirable_weight, undesirable_weight
        self.setup_reference(reference, incremental)

    def reference_batch(self, batch):
        logps, _ = self.starting_logps(batch["input_ids"], batch["attention_mask"], batch["labels"])
        own, mismatched = logps.chunk(2)
        return {"ref_logps": own, "ref_kl_logps": mismatched}

    def batch_loss(self, model, batch):
        import torch

        from medtune.recipes.losses import kto_kl, kto_loss

        n = len(batch["desirable"])
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        logps, _ = pref.forward_logps(model, ids[:n], mask[:n], labels[:n])
        with torch.no_grad():
            kl_logps, _ = pref.forward_logps(model, ids[n:], mask[n:], labels[n:])
        ref = batch if self.precomputed else self.reference_batch(batch)
        kl = kto_kl(kl_logps, ref["ref_kl_logps"])
        good = batch["desirable"]
        losses = kto_loss(logps, ref["ref_logps"], good, kl, self.beta, *self.weights)
        rewards = self.beta * (logps - ref["ref_logps"]).detach()
        metrics = {"kl": kl}
        if good.any():
            metrics["rewards/chosen"] = rewards[good].mean()
        if (~good).any():
            metrics["rewards/rejected"] = rewards[~good].mean()
        return losses.mean(), metrics


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the KTO trainer (reference log-probs precomputed here when so configured)."""
    p = cfg.preference
    return pref.build_trainer(KTOTrainer, cfg, model, tokenizer, train_set, eval_set, kwargs,
                              KTOCollator(tokenizer.pad_token_id), reference=p.reference,
                              incremental=cfg.adapter.incremental, desirable_weight=p.desirable_weight,
                              undesirable_weight=p.undesirable_weight)


def extra_metrics(cfg, trainer, eval_set):
    """Return the last logged rewards and KL estimate (train and eval)."""
    return pref.logged_metrics(trainer, ("rewards/chosen", "rewards/rejected", "kl"))
