"""Sliding-window perplexity on held-out text (the strided method of the transformers docs).

Example::

    medtune eval ppl --model runs/pt --data heldout.txt --window 1024 --stride 512 --output runs/eval/ppl

    from medtune.evaluation.perplexity import perplexity_by_file
    overall, per_file = perplexity_by_file(model, tokenizer, {"heldout.txt": ["第一段。", "第二段。"]},
                                           window=1024, stride=512)
    overall["ppl"], per_file["heldout.txt"]["tokens"]

Each file's records are joined with a blank line into one token stream (as the transformers docs
join WikiText), prefixed with the tokenizer's BOS token when it has one. Windows of ``window``
tokens start every ``stride`` tokens; each window scores only the tokens the previous window did
not, so every token is scored exactly once and sees at least ``window - stride`` tokens of context.
The first token of a stream has no context and is not scored; with ``stride == window`` the windows
are independent chunks and neither is each chunk's first token (as in the transformers docs). Perplexity is ``exp`` of the mean NLL over scored tokens — per file, and overall weighted by
tokens. Windows are batched (right-padded, masked); results do not depend on the batch size.
"""

from __future__ import annotations

import math


def window_spans(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Return ``(begin, end, first)`` per window: tokens ``[begin, end)`` go in, tokens
    ``[first, end)`` are scored — each token once; a window's first token never (no context)."""
    spans, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(prev_end, begin + 1)  # a window's first token has nothing to predict it
        if first < end:
            spans.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def check_window(window: int, stride: int, max_positions: int | None) -> None:
    """Raise a one-line ``MedtuneError`` for a window/stride the model cannot take."""
    from medtune.errors import MedtuneError

    if window < 2:
        raise MedtuneError(f"--window {window} is too small; use at least 2 tokens")
    if not 1 <= stride <= window:
        raise MedtuneError(f"--stride {stride} must be between 1 and --window ({window})")
    if max_positions and window > max_positions:
        raise MedtuneError(f"--window {window} exceeds the model's {max_positions} positions; "
                           f"pass --window {max_positions} or less")


def stream_ids(tokenizer, texts: list[str]) -> list[int]:
    """Return the token ids of ``texts`` joined by blank lines, BOS first when the tokenizer has one."""
    ids = list(tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    return [bos, *ids] if bos is not None else ids


def batch_nll(model, windows: list[list[int]], firsts: list[int], pad_id: int) -> list[float]:
    """Return the summed NLL of tokens ``window[first:]`` for each window, in one forward."""
    import torch
    import torch.nn.functional as F

    width = max(len(w) for w in windows)
    ids = torch.tensor([w + [pad_id] * (width - len(w)) for w in windows], device=model.device)
    mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in windows], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    sums = []
    for row, (w, first) in enumerate(zip(windows, firsts)):
        # position j predicts token j + 1; upcast one row at a time (vocab-sized logits are large)
        pred = logits[row, first - 1:len(w) - 1].float()
        sums.append(F.cross_entropy(pred, ids[row, first:len(w)], reduction="sum").item())
    return sums


def sequence_nll(model, sequences: list[list[int]], window: int, stride: int, batch_size: int = 16,
                 pad_id: int = 0, progress: bool = False) -> list[tuple[float, int]]:
    """Return ``(summed NLL, scored tokens)`` per sequence, windows batched across sequences."""
    from tqdm import tqdm

    jobs = [(i, ids[b:e], f - b) for i, ids in enumerate(sequences) for b, e, f in
            window_spans(len(ids), window, stride)]
    totals = [[0.0, 0] for _ in sequences]
    with tqdm(total=len(jobs), disable=not progress, unit="window", desc="ppl") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            nlls = batch_nll(model, [w for _, w, _ in chunk], [f for _, _, f in chunk], pad_id)
            for (i, w, f), nll in zip(chunk, nlls):
                totals[i][0] += nll
                totals[i][1] += len(w) - f
            bar.update(len(chunk))
    return [(nll, n) for nll, n in totals]


def ppl_summary(nll: float, tokens: int, records: int) -> dict:
    """Return ``{"ppl", "nll", "tokens", "n"}`` for a summed NLL over ``tokens`` scored tokens."""
    if not tokens:  # nothing scored (a one-token stream without BOS)
        return {"ppl": None, "nll": None, "tokens": 0, "n": records}
    return {"ppl": math.exp(nll / tokens), "nll": nll / tokens, "tokens": tokens, "n": records}


def perplexity_by_file(model, tokenizer, texts: dict[str, list[str]], window: int = 1024,
                       stride: int = 512, batch_size: int = 16, progress: bool = False):
    """Return ``(overall, {file: summary})`` (see :func:`ppl_summary`) for each file's texts."""
    check_window(window, stride, getattr(model.config, "max_position_embeddings", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    streams = [stream_ids(tokenizer, t) for t in texts.values()]
    totals = sequence_nll(model, streams, window, stride, batch_size, pad_id, progress)
    per_file = {name: ppl_summary(nll, n, len(texts[name])) for name, (nll, n) in zip(texts, totals)}
    overall = ppl_summary(sum(t[0] for t in totals), sum(t[1] for t in totals),
                          sum(len(t) for t in texts.values()))
    return overall, per_file


def read_texts(paths, strict: bool = False, limit: int | None = None) -> tuple[dict, dict]:
    """Return ``({path: [text of each record]}, {skip reason: count})`` for held-out files of any
    format medtune reads (dialogues contribute all their turns); ``limit``: first N records per file."""
    from medtune.data.readers.formats import SHAPES
    from medtune.data.readers.records import full_text
    from medtune.data.readers.stream import ReadOptions, read_all
    from medtune.errors import MedtuneError

    texts, skipped = {}, {}
    for path in paths:
        records, tally = read_all(path, ReadOptions(on_error="raise" if strict else "count"))
        if SHAPES[tally.format] == "label":
            raise MedtuneError(f"{path}: format label holds answer keys, not text to score")
        texts[str(path)] = [full_text(r) for r in (records[:limit] if limit else records)]
        for reason, count in tally.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    return texts, skipped
