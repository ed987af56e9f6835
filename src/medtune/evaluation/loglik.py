"""Log-likelihood of answer candidates after a prompt, batched, scored as lm-evaluation-harness does.

Example::

    from medtune.evaluation.loglik import score_candidates
    [scores] = score_candidates(model, tokenizer, [prompt_ids], [prompt_text], [["A", "B", "C", "D"]])
    best = max(scores, key=scores.get)

Used by ``medtune eval choice --method loglik``; proven against lm-evaluation-harness in
``tests/integration/test_eval_choice_lmeval.py``.
"""

from __future__ import annotations


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of an already rendered text (its special tokens are in the text)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])




def score_candidates(model, tokenizer, prompts: list[list[int]], texts: list[str],
                     cands: list[list[str]], batch_size: int = 16, progress=None) -> list[dict]:
    """``{candidate: log P(candidate | prompt)}`` per prompt (token ids + their rendered text).

    Candidates are tokenized as in lm-evaluation-harness: ``encode(text + candidate)`` past the
    prompt's length. A prompt whose candidates are all one token is one row (every candidate read
    from its last position); otherwise each candidate is a row of prompt + candidate tokens.
    """
    rows, where = [], []  # rows: (ids, [[(position from the end, token), ...] per score])
    for ids, text, cs in zip(prompts, texts, cands):
        n = len(encode(tokenizer, text))
        conts = [_continuation(encode(tokenizer, text + c), n) for c in cs]
        if all(len(t) == 1 for t in conts):
            where.append([(len(rows), j) for j in range(len(cs))])
            rows.append((list(ids), [[(1, t[0])] for t in conts]))
        else:
            where.append([(len(rows) + j, 0) for j in range(len(cs))])
            rows += [(list(ids) + t[:-1], [[(len(t) - i, tok) for i, tok in enumerate(t)]]) for t in conts]
    scores = _score_rows(model, tokenizer, rows, batch_size, progress)
    return [{c: scores[r][k] for c, (r, k) in zip(cs, w)} for cs, w in zip(cands, where)]


def _continuation(whole: list[int], n_prompt: int) -> list[int]:
    # a candidate merged into the prompt's last token (no new token) is scored as that token
    return whole[n_prompt:] or whole[-1:]


def _score_rows(model, tokenizer, rows, batch_size: int, progress) -> list[list[float]]:
    """Summed log-probs per row and pick list; batches of similar length, longest first."""
    out = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    if progress is not None:
        progress.reset(total=len(rows))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        keep = max(p for i in batch for picks in rows[i][1] for p, _ in picks)
        logps = _forward_last(model, tokenizer, [rows[i][0] for i in batch], keep)
        for lp, i in zip(logps, batch):
            out[i] = [sum(float(lp[-p, tok]) for p, tok in picks) for picks in rows[i][1]]
        if progress is not None:
            progress.update(len(batch))
    return out


def _forward_last(model, tokenizer, rows, keep: int):
    """One forward pass; returns ``[batch, keep, vocab]`` float32 log-probs of the last ``keep``
    positions (left padding with explicit position ids, so each row computes as if alone)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=keep, use_cache=False).logits
    return torch.log_softmax(logits[:, -keep:].float(), dim=-1).cpu()
