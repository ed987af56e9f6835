"""How well a serve-time safety policy sorts labelled requests: per-category confusion, recall, and
false positives on ordinary questions.

Example::

    medtune eval policy                                   # bundled policy on the bundled set
    medtune eval policy --policy clinic.yaml --data my_requests.jsonl --output runs/eval/policy

    from medtune.evaluation.policy_eval import evaluate_policy, load_requests
    from medtune.inference.policy import load_policy
    report = evaluate_policy(load_policy("default"), load_requests())
    report["splits"]["test"]["recall"]["emergency"]

The bundled set (``assets/eval/policy_requests.jsonl``, 248 requests written for medtune, half
Chinese, half English) has one ``{id, split, lang, category, text}`` per line: 44 emergencies, 32
self-harm, 24 overdoses, 24 controlled-drug requests, 24 demands for a definitive diagnosis and 100
ordinary medical questions (``none``), many with alarming words used innocently ("what are the
symptoms of a heart attack", a child's paracetamol dose). Each category is split in alternating
rows into ``dev`` (the rules were tuned on it) and ``test`` (only measured). A request's predicted
category is the first category the policy matches (``none`` when none does).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.files import iter_jsonl
from medtune.inference.policy import CATEGORIES

LABELS = (*CATEGORIES, "none")


def bundled_requests_path() -> Path:
    return Path(str(resources.files("medtune") / "assets" / "eval" / "policy_requests.jsonl"))


def load_requests(path=None) -> list[dict]:
    """Return the labelled requests of a JSONL file (default: the bundled set); one-line errors."""
    path = Path(path) if path else bundled_requests_path()
    if not path.is_file():
        raise MedtuneError(f"--data {path}: no such file")
    rows = []
    for n, row in iter_jsonl(path):
        text, label = row.get("text"), row.get("category")
        if not isinstance(text, str) or not text.strip():
            raise MedtuneError(f'{path}:{n}: field "text" must be non-empty text')
        if label not in LABELS:
            raise MedtuneError(f'{path}:{n}: field "category" is {label!r}; expected one of {", ".join(LABELS)}')
        rows.append({"id": row.get("id", n), "split": str(row.get("split", "all")), "lang": row.get("lang"),
                     "category": label, "text": text})
    if not rows:
        raise MedtuneError(f"{path}: no requests")
    return rows


def evaluate_policy(policy, rows: list[dict]) -> dict:
    """Return ``{"splits": {split: scores}, "misses": [...]}`` for each split and ``all``."""
    predicted = [policy.check(r["text"]).category if policy else "none" for r in rows]
    splits = {}
    for split in sorted({r["split"] for r in rows}) + ["all"]:
        picked = [(r, p) for r, p in zip(rows, predicted) if split in ("all", r["split"])]
        splits[split] = _scores(picked)
    misses = [{"id": r["id"], "split": r["split"], "category": r["category"], "predicted": p, "text": r["text"]}
              for r, p in zip(rows, predicted) if p != r["category"]]
    return {"splits": splits, "misses": misses}


def _scores(pairs) -> dict:
    confusion = {t: dict.fromkeys(LABELS, 0) for t in LABELS}
    for row, pred in pairs:
        confusion[row["category"]][pred] += 1
    recall = {c: confusion[c][c] / sum(confusion[c].values()) for c in CATEGORIES if sum(confusion[c].values())}
    ordinary = sum(confusion["none"].values())
    flagged = ordinary - confusion["none"]["none"]
    return {"n": len(pairs), "confusion": confusion, "recall": recall,
            "flagged_any": {c: (sum(confusion[c].values()) - confusion[c]["none"]) / sum(confusion[c].values())
                            for c in CATEGORIES if sum(confusion[c].values())},
            "ordinary": ordinary, "false_positives": flagged,
            "false_positive_rate": flagged / ordinary if ordinary else None}


def markdown_table(scores: dict) -> str:
    """Return the confusion table (rows: label, columns: predicted) with recall and the FP rate."""
    head = "| label \\ predicted | " + " | ".join(LABELS) + " | n | recall |"
    lines = [head, "|" + "---|" * (len(LABELS) + 3)]
    for label in LABELS:
        row = scores["confusion"][label]
        n = sum(row.values())
        if not n:
            continue
        if label == "none":
            rate = scores["false_positive_rate"]
            tail = f"FP {scores['false_positives']}/{n} = {rate:.1%}"
        else:
            tail = f"{scores['recall'][label]:.1%}"
        lines.append(f"| {label} | " + " | ".join(str(row[p]) for p in LABELS) + f" | {n} | {tail} |")
    return "\n".join(lines)
