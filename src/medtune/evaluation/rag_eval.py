"""Retrieval-augmented QA evaluation: retrieval hit@k, and answer accuracy with and without retrieval.

Example::

    medtune eval rag --index runs/kb-index --data questions.jsonl --model runs/sft --output runs/eval/rag

    from medtune.evaluation.rag_eval import evaluate_rag, read_questions
    from medtune.inference.rag import Retriever
    scores = evaluate_rag(Retriever.load("runs/kb-index", k=3), read_questions("questions.jsonl"))

Each question row holds ``question``, the gold ``doc_id`` (or a ``doc_ids`` list: any of them is a
hit) and, to score answers, ``answer`` (a reply is correct when it contains it, as in
``evaluation.factqa``). hit@k counts a question as found when a passage of a gold document is among
the top ``k`` retrieved; ``mrr`` is the mean reciprocal rank of the first gold passage (0 when none
of the top ``k`` is gold). A question in the other language than the index's retrieves nothing
(as when serving) and is counted in ``other_language``.
"""

from __future__ import annotations

from medtune.errors import MedtuneError, where


def read_questions(path, need_answers: bool = False) -> list[dict]:
    """Return the question rows of a JSONL file; a bad row raises ``file:line: field ...``."""
    from medtune.files import iter_jsonl

    rows = []
    try:
        for n, row in iter_jsonl(path):
            place = where(path, n)
            if not isinstance(row.get("question"), str) or not row["question"].strip():
                raise MedtuneError(f'{place}: field "question" missing or empty')
            gold = row.get("doc_ids", [row["doc_id"]] if "doc_id" in row else None)
            if not isinstance(gold, list) or not gold or not all(isinstance(g, (str, int)) for g in gold):
                raise MedtuneError(f'{place}: field "doc_id" (or a "doc_ids" list) missing or not a string')
            if need_answers and not (isinstance(row.get("answer"), str) and row["answer"]):
                raise MedtuneError(f'{place}: field "answer" missing or empty (needed with --model)')
            rows.append({**row, "gold": [str(g) for g in gold]})
    except FileNotFoundError:
        raise MedtuneError(f"--data {path}: not found") from None
    except UnicodeDecodeError as exc:
        raise MedtuneError(f"--data {path}: not UTF-8 ({exc.reason})") from None
    if not rows:
        raise MedtuneError(f"--data {path}: no questions")
    return rows


def retrieval_scores(retriever, rows: list[dict], k: int) -> tuple[dict, list[dict]]:
    """Return ``({"hit@1", "hit@k", "mrr", "n", "other_language"}, per-row results)``."""
    from medtune.inference.rag import query_language

    results, other = [], 0
    for row in rows:
        lang = query_language(row["question"])
        if lang is not None and lang != retriever.language:
            other += 1
            hits = []
        else:
            hits = retriever.search(row["question"], k)
        ids = [h.passage.doc_id for h in hits]
        rank = next((i + 1 for i, d in enumerate(ids) if d in row["gold"]), None)
        results.append({"question": row["question"], "gold": row["gold"], "retrieved": ids, "rank": rank})
    n = len(rows)
    scores = {"n": n, "k": k, "hit@1": _share(r["rank"] == 1 for r in results),
              f"hit@{k}": _share(r["rank"] is not None for r in results),
              "mrr": round(sum(1 / r["rank"] for r in results if r["rank"]) / n, 4), "other_language": other}
    return scores, results


def answer_scores(bot, retriever, rows: list[dict], max_new_tokens: int = 48,
                  batch_size: int = 32) -> tuple[dict, list[dict]]:
    """Return accuracy without and with retrieval (greedy replies containing ``answer``) and the replies."""
    plain = [[{"role": "user", "content": r["question"]}] for r in rows]
    augmented = [retriever.augment(m) for m in plain]
    without = _replies(bot, plain, max_new_tokens, batch_size)
    with_rag = _replies(bot, [m for m, _ in augmented], max_new_tokens, batch_size)
    per_row = []
    for row, a, b, (_, cites) in zip(rows, without, with_rag, augmented):
        per_row.append({"reply_without": a, "correct_without": row["answer"] in a,
                        "reply_with": b, "correct_with": row["answer"] in b,
                        "citations": [c["doc_id"] for c in cites]})
    scores = {"accuracy_without_retrieval": _share(r["correct_without"] for r in per_row),
              "accuracy_with_retrieval": _share(r["correct_with"] for r in per_row)}
    return scores, per_row


def evaluate_rag(retriever, rows: list[dict], bot=None, k: int | None = None, max_new_tokens: int = 48,
                 batch_size: int = 32) -> dict:
    """Return ``{"scores", "rows"}``: retrieval scores, plus answer accuracies when ``bot`` is given."""
    k = k or retriever.k
    scores, results = retrieval_scores(retriever, rows, k)
    if bot is not None:
        answers, replies = answer_scores(bot, retriever, rows, max_new_tokens, batch_size)
        scores |= answers
        results = [{**r, **a} for r, a in zip(results, replies)]
    return {"scores": scores, "rows": [{**row, **r} for row, r in zip(rows, results)]}


def _replies(bot, conversations, max_new_tokens: int, batch_size: int) -> list[str]:
    out = []
    for start in range(0, len(conversations), batch_size):
        out += bot.chat_batch(conversations[start:start + batch_size], max_new_tokens=max_new_tokens,
                              temperature=0.0)
    return out


def _share(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0
