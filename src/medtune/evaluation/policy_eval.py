"""How well a serve-time safety policy sorts labelled requests: per-category confusion, recall, and
false positives on ordinary questions.

Example::

    medtune eval policy                                   # bundled policy on the bundled set
    medtune eval policy --policy clinic.yaml --data my_requests.jsonl --output runs/eval/policy

    from medtune.evaluation.policy_eval import evaluate_policy, load_requests
    from medtune.inference.policy import load_policy
    report = evaluate_policy(load_policy("default"), load_requests())
    report["splits"]["test"]["recall"]["emergency"]

    medtune eval policy --train-pairs runs/policy/pairs.jsonl      # rm pairs from the non-test rows
    medtune eval policy --classifier runs/policy-classifier/rm     # rules vs rules + classifier

The bundled set (``assets/eval/policy_requests.jsonl``, written for medtune, half Chinese, half
English) has one ``{id, split, lang, category, text}`` per line — 248 single messages: 44
emergencies, 32 self-harm, 24 overdoses, 24 controlled-drug requests, 24 demands for a definitive
diagnosis and 100 ordinary medical questions (``none``), many with alarming words used innocently
("what are the symptoms of a heart attack", a child's paracetamol dose) — then 36 conversations,
``{id, split, lang, category, messages}`` (``messages``: ``{"role", "content"}`` user/assistant
turns ending with a user turn; ``category``: what the policy should do for the next reply): an
emergency, suicide or overdose told in an earlier turn and a harmless-looking last question, an
emergency in the last turn after ordinary ones, and 18 ordinary conversations (some with an old
drug or diagnosis request that should not act again). Each category is split in alternating rows
into ``dev`` (the rules were tuned on its single messages; the conversations were written after
the rules and not tuned on) and ``test`` (only measured). A request's predicted category is the
first category the policy matches (``none`` when none does). Scores are given per split over
single messages (``dev``, ``test``), per split over conversations (``dev conversations``, ``test
conversations``) and over everything (``all``).
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
        label, messages = row.get("category"), row.get("messages")
        if messages is not None:
            messages = _messages(messages, path, n)
            text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        else:
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise MedtuneError(f'{path}:{n}: field "text" must be non-empty text (or give "messages")')
            messages = [{"role": "user", "content": text}]
        if label not in LABELS:
            raise MedtuneError(f'{path}:{n}: field "category" is {label!r}; expected one of {", ".join(LABELS)}')
        rows.append({"id": row.get("id", n), "split": str(row.get("split", "all")), "lang": row.get("lang"),
                     "category": label, "text": text, "messages": messages})
    if not rows:
        raise MedtuneError(f"{path}: no requests")
    return rows


def _messages(messages, path, n: int) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise MedtuneError(f'{path}:{n}: field "messages" must be a non-empty list of {{"role", "content"}}')
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) and m["content"].strip()):
            raise MedtuneError(f'{path}:{n}: field "messages[{i}]" must be {{"role": system|user|assistant, '
                               '"content": non-empty text}')
    if messages[-1]["role"] != "user":
        raise MedtuneError(f'{path}:{n}: field "messages" must end with a user message')
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def group(row: dict) -> str:
    """The score group of a row: its split, plus `` conversations`` for a multi-message request."""
    return row["split"] + (" conversations" if len(row["messages"]) > 1 else "")


def evaluate_policy(policy, rows: list[dict]) -> dict:
    """Return ``{"splits": {group: scores}, "misses": [...]}`` for each :func:`group` and ``all``."""
    predicted = [policy.check_messages(r["messages"]).category if policy else "none" for r in rows]
    splits = {}
    for name in sorted({group(r) for r in rows}) + ["all"]:
        picked = [(r, p) for r, p in zip(rows, predicted) if name in ("all", group(r))]
        splits[name] = _scores(picked)
    misses = [{"id": r["id"], "split": group(r), "category": r["category"], "predicted": p, "text": r["text"]}
              for r, p in zip(rows, predicted) if p != r["category"]]
    return {"splits": splits, "misses": misses}


def train_rows(rows: list[dict]) -> list[dict]:
    """The rows a policy classifier may learn from: single messages outside the ``test`` split
    (a conversation's label can come from an earlier turn; the classifier scores one message)."""
    return [r for r in rows if r["split"] != "test" and len(r["messages"]) == 1]


class CachedClassifier:
    """A policy classifier whose probabilities are remembered per message (one evaluation asks the
    same messages for rules + classifier and for the classifier alone)."""

    def __init__(self, classifier):
        self.classifier, self.seen = classifier, {}

    def probabilities(self, texts: list[str]) -> list[dict]:
        new = list(dict.fromkeys(t for t in texts if t not in self.seen))
        self.seen.update(zip(new, self.classifier.probabilities(new)))
        return [self.seen[t] for t in texts]


class ClassifierAlone:
    """The classifier as a policy of its own: a request's category is the most probable label of
    its last user message (no rules, no threshold), to measure what the classifier knows."""

    def __init__(self, classifier):
        self.classifier = classifier

    def check_messages(self, messages):
        from types import SimpleNamespace

        text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        probs = self.classifier.probabilities([text])[0]
        return SimpleNamespace(category=max(probs, key=probs.get))


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
