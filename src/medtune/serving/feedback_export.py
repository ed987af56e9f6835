"""Feedback stored while serving -> preference pairs (``stage: dpo`` and kin) and KTO records.

Example::

    medtune data feedback export --db runs/sft/feedback.db -o pairs.jsonl --kto kto.jsonl

    store = FeedbackStore.open("runs/sft/feedback.db")
    result = export_feedback(store.responses())
    result.pairs[0]   # {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}

Each response's verdict is its latest feedback: a corrected text makes the correction *chosen*
and the original reply *rejected*; otherwise thumbs up makes the reply chosen, thumbs down or a
regenerate (the answer was replaced) makes it rejected. Answers to the same prompt (the same
messages, de-identified) are paired every chosen against every rejected. Pairs are in TRL's
conversational preference format, KTO records in the ``kto`` format
(:mod:`medtune.data.readers.formats`); each one is checked by the reader the training stage uses,
so what is written trains. Nothing is dropped silently: :attr:`Exported.skipped` counts every
response, prompt or pair left out, by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from medtune.serving.store import RATINGS


@dataclass
class Exported:
    pairs: list[dict] = field(default_factory=list)
    kto: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    responses: int = 0


def verdicts(response: dict) -> list[tuple[str, bool]]:
    """Return ``(answer text, desirable)`` from ``response``'s latest feedback ([] without any)."""
    notes = response["feedback"]
    corrected = next((n["corrected_text"] for n in reversed(notes) if n["corrected_text"] is not None), None)
    rating = next((n["rating"] for n in reversed(notes) if n["rating"] is not None), None)
    if corrected is not None:
        return [(corrected, True), (response["reply"], False)]
    if rating not in RATINGS:  # never rated, or the rating was taken back
        return []
    return [(response["reply"], rating == "up")]


def export_feedback(responses: list[dict]) -> Exported:
    """Return the preference pairs and KTO records of stored ``responses`` (see the module doc)."""
    from medtune.data.readers.formats import Bad, Skip, read_kto, read_preference

    out = Exported(responses=len(responses))
    groups: dict[str, dict] = {}  # prompt JSON -> {"prompt", "chosen": [...], "rejected": [...]}
    for response in responses:
        answers = verdicts(response)
        if not answers:
            out.skipped["response without feedback"] += 1
            continue
        group = groups.setdefault(json.dumps(response["prompt"], ensure_ascii=False, sort_keys=True),
                                  {"prompt": response["prompt"], "chosen": [], "rejected": []})
        for text, good in answers:
            side = group["chosen" if good else "rejected"]
            if text not in side:
                side.append(text)
    for group in groups.values():
        for text, good in [(t, True) for t in group["chosen"]] + [(t, False) for t in group["rejected"]]:
            record = {"prompt": group["prompt"], "completion": [_assistant(text)], "label": good}
            _keep(out.kto, record, read_kto, out.skipped, "KTO record", (Bad, Skip))
        if not group["rejected"]:
            out.skipped["prompt with only liked or edited answers (no rejected one to pair with)"] += 1
        elif not group["chosen"]:
            out.skipped["prompt with only disliked or regenerated answers (no chosen one to pair with)"] += 1
        for chosen in group["chosen"]:
            for rejected in group["rejected"]:
                if chosen.strip() == rejected.strip():
                    out.skipped["pair whose chosen and rejected answers are the same text"] += 1
                    continue
                record = {"prompt": group["prompt"], "chosen": [_assistant(chosen)],
                          "rejected": [_assistant(rejected)]}
                _keep(out.pairs, record, read_preference, out.skipped, "pair", (Bad, Skip))
    return out


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _keep(into: list, record: dict, reader, skipped: Counter, what: str, refused) -> None:
    """Append ``record`` when the training reader takes it; count it under its reason otherwise."""
    try:
        reader(record)
    except refused as exc:
        skipped[f"{what} the trainer would refuse: {getattr(exc, 'reason', None) or exc}"] += 1
        return
    into.append(record)
