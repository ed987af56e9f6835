"""Domain vocabulary expansion: learn frequent CJK terms a base tokenizer splits up, add them, grow the model.

Example::

    medtune tokenizer extend --base runs/tiny --corpus tcm.txt --add 2000 -o runs/tiny-ext

    from medtune.models.vocab import extend_vocabulary
    report = extend_vocabulary("runs/tiny", ["tcm.txt"], add=2000, out="runs/tiny-ext")
    report["corpus_tokens"]["ratio"]      # e.g. 0.59: the domain corpus now takes 59% of the tokens

Candidates are strings of 1..``max_chars`` CJK ideographs taken from runs of CJK characters
(Chinese has no word boundaries, so every n-gram inside a run is a candidate). Latin words are
left out on purpose: an added token matches anywhere, also inside longer words, and cannot carry
the leading-space form byte-level BPE gives words, so it can make other text tokenize worse.

A candidate saves ``freq × (tokens it costs now − 1)`` tokens over the corpus. Selection is
greedy on that score (ties broken by the string) with two corrections so that chosen tokens do not
make later ones look better than they are: a chosen token consumes the occurrences of its
substrings (their frequency drops by its own), and a candidate's cost is re-measured with the
tokens already chosen, matched leftmost-longest as the tokenizer matches added tokens. Scores only
fall, so a lazy max-heap finds the true best each time. Both corrections are approximations (a
token spanning two candidates' boundary is not seen); the report gives the real before/after count.

The new tokens are ordinary (not special) added tokens; every old token keeps its id. The new
rows of the input embeddings and of an untied output head are the mean of the old rows, so the
model's outputs on old tokens are unchanged. The new rows still need training: a ``pt`` stage on
the output with ``adapter.method: full``, or ``lora`` with ``modules_to_save: [embed_tokens, lm_head]``.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from pathlib import Path

from medtune.errors import MedtuneError

REPORT = "vocab_report.json"
# CJK Unified Ideographs, extension A, compatibility ideographs, extensions B-F.
CJK_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]+")
# Measured after a newline: no tokenizer merges across it, and a SentencePiece dummy prefix lands on it.
_ANCHOR = "\n"


def corpus_texts(paths) -> list[str]:
    """Return every text of the corpus files: a ``text`` field, or every message's content.

    Files may mix formats (a ``.txt`` next to a messages JSONL): vocabulary needs text, not one shape.
    """
    from medtune.data.readers.files import read_file

    texts = []
    for path in paths:
        for rec in read_file(path).records:
            if "text" in rec:
                texts.append(rec["text"])
                continue
            turns = [m for key in ("messages", "prompt", "chosen", "rejected", "completion")
                     for m in rec.get(key, [])]
            texts += [m["content"] for m in turns]
    return [t for t in texts if t.strip()]


def count_ngrams(texts, max_chars: int, progress: bool = False) -> Counter:
    """Return how often each 1..``max_chars``-character string occurs inside runs of CJK characters."""
    from tqdm.auto import tqdm

    counts: Counter = Counter()
    for text in tqdm(texts, desc="counting candidates", unit="doc", disable=not progress, delay=1):
        grams: list[str] = []
        for run in CJK_RUN.findall(text):
            for n in range(1, min(max_chars, len(run)) + 1):
                grams.extend(run[i:i + n] for i in range(len(run) - n + 1))
        counts.update(grams)
    return counts


def base_token_counts(tokenizer, strings) -> dict[str, int]:
    """Return how many tokens ``tokenizer`` spends on each string (in running text, no specials)."""
    strings = list(strings)
    if not strings:
        return {}
    offset = len(tokenizer(_ANCHOR, add_special_tokens=False)["input_ids"])
    ids = tokenizer([_ANCHOR + s for s in strings], add_special_tokens=False)["input_ids"]
    return {s: max(1, len(x) - offset) for s, x in zip(strings, ids)}


def _segments(s: str, chosen: set) -> list[tuple[int, int, bool]]:
    """Return ``s`` cut into ``(start, end, is_chosen)`` spans: chosen tokens matched leftmost-longest
    (as the tokenizer matches added tokens) and the gaps between them."""
    spans, i, gap = [], 0, 0
    while i < len(s):
        j = next((j for j in range(len(s), i, -1) if s[i:j] in chosen), None)
        if j is None:
            i += 1
            continue
        spans += [(gap, i, False)] if gap < i else []
        spans.append((i, j, True))
        i = gap = j
    return spans + ([(gap, len(s), False)] if gap < len(s) else [])


def _cost(s: str, chosen: set, base_len: dict) -> int:
    """Return the tokens ``s`` costs once ``chosen`` are added."""
    return sum(1 if hit else base_len[s[a:b]] for a, b, hit in _segments(s, chosen))


def _consume(s: str, chosen: set, eff: dict, freq: int) -> None:
    """Lower the effective frequency of ``s``'s proper substrings by ``freq`` (its occurrences).

    Substrings inside a chosen token within ``s`` are skipped: that token's pick consumed them already.
    """
    covered = [(a, b) for a, b, hit in _segments(s, chosen) if hit]
    for i in range(len(s)):
        for j in range(i + 1, len(s) + 1):
            t = s[i:j]
            if t != s and t in eff and not any(a <= i and j <= b for a, b in covered):
                eff[t] = max(0, eff[t] - freq)


def select_tokens(freqs: dict, base_len: dict, add: int) -> list[dict]:
    """Return up to ``add`` picks ``{token, freq, base_tokens, saved}``, best estimated saving first.

    ``freqs`` holds the candidates (already filtered by frequency) and all their substrings;
    ``base_len`` their token counts under the base tokenizer. Deterministic: ties go to the
    smaller string.
    """
    eff = dict(freqs)
    heap = [(-f * (base_len[s] - 1), s) for s, f in freqs.items() if base_len[s] > 1]
    heapq.heapify(heap)
    chosen: set = set()
    picks = []
    while heap and len(picks) < add:
        neg, s = heapq.heappop(heap)
        score = eff[s] * (_cost(s, chosen, base_len) - 1)
        if score <= 0:
            continue
        if score < -neg:  # stale: re-file under its current score
            heapq.heappush(heap, (-score, s))
            continue
        picks.append({"token": s, "freq": freqs[s], "base_tokens": base_len[s], "saved": score})
        _consume(s, chosen, eff, eff[s])
        chosen.add(s)
    return picks


def learn_domain_tokens(tokenizer, texts, add: int, min_freq: int = 5, max_chars: int = 4,
                        progress: bool = False) -> list[dict]:
    """Return the domain tokens to add to ``tokenizer`` for ``texts`` (see :func:`select_tokens`)."""
    counts = count_ngrams(texts, max_chars, progress)
    if not counts:
        raise MedtuneError("the corpus holds no Chinese (CJK) characters; candidates are drawn from "
                           "runs of them")
    freqs = {s: f for s, f in counts.items() if f >= min_freq}
    if not freqs:
        top = max(counts.values(), default=0)
        raise MedtuneError(f"no candidate string occurs --min-freq {min_freq} times in the corpus (the most "
                           f"frequent occurs {top} times); lower --min-freq or give a larger corpus")
    picks = select_tokens(freqs, base_token_counts(tokenizer, sorted(freqs)), add)
    if not picks:
        raise MedtuneError(f"all {len(freqs):,} candidates seen at least --min-freq {min_freq} times are "
                           "already single tokens; lower --min-freq or raise --max-chars")
    return picks


def add_domain_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Add ``tokens`` as normal tokens; return their ids. Refuses if any old token's id moved."""
    before = tokenizer.get_vocab()
    added = tokenizer.add_tokens(list(tokens), special_tokens=False)
    if added != len(tokens):
        raise MedtuneError(f"the tokenizer took {added} of {len(tokens)} new tokens (some already exist)")
    after = tokenizer.get_vocab()
    moved = [t for t, i in before.items() if after.get(t) != i]
    if moved:
        raise MedtuneError(f"adding tokens changed the id of {len(moved)} old tokens (e.g. {moved[0]!r}); "
                           "this tokenizer cannot be extended safely")
    return tokenizer.convert_tokens_to_ids(list(tokens))


def resize_with_mean(model, old_size: int, new_ids: list[int]) -> None:
    """Grow ``model``'s embeddings to hold ``new_ids``, their rows set to the mean of the first ``old_size``.

    Rows past ``old_size`` that a padded embedding matrix already had are not averaged in. A tied
    head shares the input matrix; an untied one gets the mean of its own old rows.
    """
    import torch

    rows = max(model.get_input_embeddings().weight.shape[0], max(new_ids) + 1)
    model.resize_token_embeddings(rows, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(head.weight)
    index = torch.tensor(new_ids)
    with torch.no_grad():
        for weight in matrices:
            mean = weight[:old_size].float().mean(dim=0)
            weight[index] = mean.to(weight.dtype)


def corpus_token_counts(tokenizer, texts, progress: bool = False, chunk: int = 2000) -> list[int]:
    """Return the number of tokens (no special tokens) of each text."""
    from tqdm.auto import tqdm

    texts, counts = list(texts), []
    backend = tokenizer.backend_tokenizer
    for i in tqdm(range(0, len(texts), chunk), desc="tokenizing corpus", disable=not progress,
                  delay=1):
        # The Rust batch call without offsets: ~1.5x faster than tokenizer(...) on MBs of text.
        counts += [len(e) for e in backend.encode_batch_fast(texts[i:i + chunk], add_special_tokens=False)]
    return counts


def _pieces(tokenizer, text: str) -> list[str]:
    """Return ``text`` cut where its tokens start (byte pieces of one character stay together)."""
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = sorted({a for a, b in spans if b > a})
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])]


def _examples(tokenizer, texts, before, after, k: int = 3) -> list[dict]:
    """Return the ``k`` documents the new tokens shorten most, cut into their new pieces."""
    order = sorted(range(len(texts)), key=lambda i: (after[i] - before[i], i))[:k]
    return [{"text": texts[i][:80], "tokens_before": before[i], "tokens_after": after[i],
             "pieces": _pieces(tokenizer, texts[i][:80])} for i in order]


def check_options(base, corpus, add: int, min_freq: int, max_chars: int, out, overwrite: bool) -> None:
    """Raise a one-line :class:`MedtuneError` for bad arguments, before anything heavy runs."""
    base, out = Path(base), Path(out)
    if not (base / "config.json").is_file():
        adapter = (base / "adapter_config.json").is_file()
        hint = "; merge the adapter into its base first (medtune export merge)" if adapter else ""
        raise MedtuneError(f"--base '{base}' is not a model dir (no config.json){hint}")
    if not corpus:
        raise MedtuneError("--corpus: no files given")
    for name, value in (("--add", add), ("--min-freq", min_freq), ("--max-chars", max_chars)):
        if value < 1:
            raise MedtuneError(f"{name} must be at least 1, got {value}")
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"--out '{out}' exists and is not a directory")
    if out.resolve() == base.resolve() or base.resolve().is_relative_to(out.resolve()):
        raise MedtuneError(f"--out '{out}' would replace --base '{base}'; choose another dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MedtuneError(f"--out '{out}' is not empty; choose an empty dir or pass --overwrite")


def _checkpoint_dtype(base: Path):
    """Return the torch dtype the base checkpoint is stored in (fp32 when it does not say)."""
    import torch

    cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


def _load_tokenizer(base: str):
    """Return the base dir's fast tokenizer, chat template (if any) as saved."""
    from transformers import AutoTokenizer

    try:  # not load_tokenizer: a pretrained base without a chat template is the usual input here
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedtuneError(f"cannot load the tokenizer of '{base}': {first}") from None
    if not tokenizer.is_fast:
        raise MedtuneError(f"the tokenizer of '{base}' is not a fast (tokenizers) tokenizer; save it "
                           "with tokenizer.json (transformers converts most slow tokenizers on save)")
    return tokenizer


def _save(model, tokenizer, out: Path, dtype, report: dict) -> None:
    from medtune.files import atomic_dir

    with atomic_dir(out) as tmp:  # a failed save leaves a previous output as it was
        model.to(dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")


def extend_vocabulary(base, corpus, add: int, out, min_freq: int = 5, max_chars: int = 4,
                      overwrite: bool = False, progress: bool = False) -> dict:
    """Add up to ``add`` domain tokens learned from ``corpus`` to the model at ``base``; save to ``out``.

    Returns the report also written to ``out/vocab_report.json``: the tokens with their corpus
    frequencies, the corpus token count before/after and their ratio, characters per token.
    """
    from medtune.models.load import load_model

    corpus = [str(p) for p in corpus]
    check_options(base, corpus, add, min_freq, max_chars, out, overwrite)
    texts = corpus_texts(corpus)
    if not texts:
        raise MedtuneError(f"--corpus {' '.join(corpus)}: no text (every record is blank)")
    tokenizer = _load_tokenizer(str(base))
    picks = learn_domain_tokens(tokenizer, texts, add, min_freq, max_chars, progress)
    before, old_size = corpus_token_counts(tokenizer, texts, progress), len(tokenizer)
    ids = add_domain_tokens(tokenizer, [p["token"] for p in picks])
    model = load_model(str(base), dtype="float32", device="cpu", trust_remote_code=False)
    resize_with_mean(model, old_size, ids)
    after = corpus_token_counts(tokenizer, texts, progress)
    chars, n_before, n_after = sum(map(len, texts)), sum(before), sum(after)
    report = {
        "base": str(base), "corpus": corpus, "documents": len(texts), "characters": chars,
        "options": {"add": add, "min_freq": min_freq, "max_chars": max_chars},
        "vocab_size": {"before": old_size, "after": len(tokenizer)},
        "corpus_tokens": {"before": n_before, "after": n_after, "ratio": round(n_after / n_before, 4)},
        "chars_per_token": {"before": round(chars / n_before, 4), "after": round(chars / n_after, 4)},
        "added": [{"id": i, **p} for i, p in zip(ids, picks)],
        "examples": _examples(tokenizer, texts, before, after),
    }
    _save(model, tokenizer, Path(out), _checkpoint_dtype(Path(base)), report)
    return report
