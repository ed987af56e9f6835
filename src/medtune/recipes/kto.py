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
from medtune.recipes.preference import PreferenceRecipe


def unpaired(records) -> list[tuple[list, list, bool]]:
    """Return ``(prompt, completion, desirable)`` examples; preference pairs give all chosen first,
    then all rejected, so the rotation by one pairs each answer with another prompt."""
    if records and "completion" in records[0]:
        return [(r["prompt"], r["completion"], bool(r["label"])) for r in records]
    chosen = [(r["prompt"], r["chosen"], True) for r in records]
    return chosen + [(r["prompt"], r["rejected"], False) for r in records]


def make_unpaired_examples(cfg, tokenizer, records, stats):
    """Return rows ``{input_ids, labels, kl_input_ids, kl_labels, desirable, length}``.

    ``kl_*`` is the example's prompt with the previous example's answer (mismatched pair).
    """
    import dataclasses

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


class KTORecipe(PreferenceRecipe):
    """Labelled answers (or pairs split in two) against the starting model's log-probs."""

    options = ("beta", "reference", "desirable_weight", "undesirable_weight")
    logged = ("rewards/chosen", "rewards/rejected", "kl")

    def make_examples(self, cfg, tokenizer, records, stats):
        return make_unpaired_examples(cfg, tokenizer, records, stats)

    def trainer_class(self):
        from medtune.recipes.preference_trainer import KTOTrainer

        return KTOTrainer

    def collator(self, tokenizer):
        return KTOCollator(tokenizer.pad_token_id)

    def trainer_options(self, cfg) -> dict:
        p = cfg.preference
        return {"reference": p.reference, "incremental": cfg.adapter.incremental,
                "desirable_weight": p.desirable_weight, "undesirable_weight": p.undesirable_weight}
