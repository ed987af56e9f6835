"""Knowledge augmentation by rule: each passage → N rewrites that state the same facts differently.

A fact stored from one phrasing is often not extractable by questions later; several phrasings
and orders of the same facts make it so (Allen-Zhu & Li, Physics of LMs 3.1). Rules, no model:

- sentence permutation: the passage's sentences in another order;
- template paraphrase of structured facts: "X的K是V。" / "The K of X is V." sentences are
  re-rendered with another template ("V是X的K。", "For X, the K is V."); a summary sentence
  "X：K1为V1，K2为V2，需避免V3。" becomes one sentence per clause.

>>> import random
>>> rewrite_passage("偏头痛的典型症状是头痛。偏头痛应到神经内科就诊。", 2, random.Random(0))
['偏头痛，典型症状：头痛。偏头痛应到神经内科就诊。', '关于偏头痛的典型症状：头痛。偏头痛应到神经内科就诊。']

``medtune data generate rewrite corpus.txt -o corpus.rewrites.jsonl --mode rules --n 4``
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator

__all__ = ["paraphrase_sentence", "rewrite_passage", "rewrite_passages", "split_sentences"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_BREAK = re.compile(r"(?<=[。！？])\s*|(?<=[.!?])\s+|\n+")
ATTEMPTS_PER_REWRITE = 10  # random draws tried per wanted rewrite before settling for fewer

# A subject's attribute and its value: 偏头痛的典型症状是头痛。
_ZH_FACT = re.compile(r"^(?P<s>[^，。：:；的]{1,20})的(?P<k>[^，。：:；是为]{1,10})(?:是|为)(?P<v>[^。；]+)。$")
_ZH_TEMPLATES = ("{s}的{k}是{v}。", "{v}是{s}的{k}。", "说到{s}，它的{k}是{v}。", "{s}，{k}：{v}。", "关于{s}的{k}：{v}。")
# A summary: 偏头痛：典型症状为头痛，就诊科室为神经内科，需避免饮酒。
_ZH_SUMMARY = re.compile(r"^(?P<s>[^，。：:；]{1,20})[：:](?P<rest>[^。]+)。$")
_ZH_CLAUSE = re.compile(r"^(?P<k>[^，；为是]{1,10})(?:为|是)(?P<v>.+)$")
_EN_FACTS = (re.compile(r"^The (?P<k>[\w -]{1,40}?) of (?P<s>[^,;]{1,60}?) (?P<verb>is|are) (?P<v>[^;]+)\.$"),
             re.compile(r"^(?P<s>[^,;']{1,60})'s (?P<k>[\w -]{1,40}?) (?P<verb>is|are) (?P<v>[^;]+)\.$"))
_EN_TEMPLATES = ("The {k} of {s} {verb} {v}.", "{s}'s {k} {verb} {v}.", "For {s}, the {k} {verb} {v}.",
                 "{v} {verb} the {k} of {s}.")


def split_sentences(text: str) -> list[str]:
    """Return the sentences of ``text``: split after 。！？, after .!? followed by space, at newlines."""
    return [s.strip() for s in _BREAK.split(text.strip()) if s and s.strip()]


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def paraphrase_sentence(sentence: str, rng: random.Random) -> list[str]:
    """Return ``sentence`` as one or more sentences stating the same facts: a fact re-rendered
    with a template drawn from ``rng`` (maybe its own), a summary split into one sentence per
    clause; any other sentence unchanged."""
    m = _ZH_FACT.match(sentence)
    if m:
        return [rng.choice(_ZH_TEMPLATES).format(**m.groupdict())]
    m = _ZH_SUMMARY.match(sentence)
    if m:
        out = []
        for clause in re.split(r"[，；]", m["rest"]):
            c = _ZH_CLAUSE.match(clause.strip())
            out.append(rng.choice(_ZH_TEMPLATES).format(s=m["s"], **c.groupdict()) if c else f"{m['s']}{clause.strip()}。")
        return out
    for pattern in _EN_FACTS:
        m = pattern.match(sentence)
        if m:
            return [_capitalized(rng.choice(_EN_TEMPLATES).format(**m.groupdict()))]
    return [sentence]


def _join(sentences: list[str]) -> str:
    sep = "" if _CJK.search("".join(sentences)) else " "
    return sep.join(sentences)


def rewrite_passage(text: str, n: int, rng: random.Random) -> list[str]:
    """Return up to ``n`` distinct rewrites of ``text``, none equal to it: its sentences paraphrased
    (:func:`paraphrase_sentence`) and shuffled. Fewer when the passage allows fewer (one plain
    sentence allows none)."""
    sentences = split_sentences(text)
    seen, out = {_join(sentences), text.strip()}, []
    for _ in range(n * ATTEMPTS_PER_REWRITE):
        if len(out) == n:
            break
        parts = [p for s in sentences for p in paraphrase_sentence(s, rng)]
        rng.shuffle(parts)
        candidate = _join(parts)
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out


def rewrite_passages(passages: Iterable[tuple[str, str]], n: int, seed: int = 0,
                     keep_original: bool = False, counts: Counter | None = None) -> Iterator[dict]:
    """Yield ``{"text", "id"}`` records: up to ``n`` rule rewrites of each ``(id, text)`` passage
    (ids ``ID~1``, ``ID~2``, ...), after the passage itself when ``keep_original``. ``counts``
    gathers ``passages``, ``rewrites``, ``short`` (passages with fewer than n rewrites) and
    ``unchanged`` (passages no rule could rewrite)."""
    rng = random.Random(seed)
    counts = counts if counts is not None else Counter()
    for pid, text in passages:
        rewrites = rewrite_passage(text, n, rng)
        counts["passages"] += 1
        counts["rewrites"] += len(rewrites)
        counts["short"] += len(rewrites) < n
        counts["unchanged"] += not rewrites
        if keep_original:
            yield {"text": text, "id": pid}
        for i, rewrite in enumerate(rewrites, 1):
            yield {"text": rewrite, "id": f"{pid}~{i}"}
