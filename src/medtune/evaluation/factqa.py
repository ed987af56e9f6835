"""Fact QA accuracy: ask each question, greedy decode, count replies containing the gold answer.

Example::

    from medtune import ChatModel
    from medtune.evaluation.factqa import fact_accuracy
    acc, rows = fact_accuracy(ChatModel.load("runs/demo/sft"), [{"question": "…", "answer": "…"}])
"""

from __future__ import annotations


def fact_accuracy(bot, items, batch_size: int = 64, max_new_tokens: int = 32, chat: bool = True):
    """Return ``(accuracy, rows)``; each row is the item plus ``reply`` and ``correct``.

    ``chat=True`` asks ``item["question"]`` through the chat template; ``chat=False`` continues
    ``item["question"]`` as plain text (a cloze probe that also works on base models).
    """
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        if chat:
            convs = [[{"role": "user", "content": it["question"]}] for it in chunk]
            replies = bot.chat_batch(convs, max_new_tokens=max_new_tokens, temperature=0.0)
        else:
            replies = bot.complete_batch([it["question"] for it in chunk],
                                         max_new_tokens=max_new_tokens, temperature=0.0)
        rows += [{**it, "reply": r, "correct": it["answer"] in r} for it, r in zip(chunk, replies)]
    accuracy = sum(r["correct"] for r in rows) / len(rows) if rows else 0.0
    return accuracy, rows


def accuracy_by(rows, key: str) -> dict:
    """Return accuracy per value of ``key`` (e.g. per relation)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r["correct"])
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}
