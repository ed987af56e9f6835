"""Answer letters in a generated reply: the extraction rules of CMB and Apollo.

Example::

    >>> extract_answer("答案是B。", {"A": "x", "B": "y"}, multi=False)
    'B'

Used by ``medtune eval choice --method generate``.
"""

from __future__ import annotations

import re
from collections import Counter


def _plain(text: str) -> str:
    return text.strip().rstrip(".。").strip().lower()



# CMB src/utils.py `match_choice`: the letters after 答案是 / 正确选项为 ... up to 。 or "."
_CMB_ANSWER = re.compile(r"(答案|正确选项)(?:是|：|为|应该是|应该为)(.*?)(。|\.|$)", re.DOTALL)
# The English counterpart of CMB's rule (ours): "the answer is (B).", "Answer: AC"
_EN_ANSWER = re.compile(r"answer(?:\s+is|\s*:)\s*(.*?)(?:\.\s|\.$|\n|$)", re.IGNORECASE | re.DOTALL)
# Apollo src/evaluate/generate_score.py `extract_and_choose_answer`: "(B)" / "（B）" on the first
# non-empty line, then loose capital letters on that line, then "Yes." -> A, "No." -> B
_APOLLO_BRACKET = re.compile(r"[（(]([A-Za-z])[）)]")
_LETTER_RUN = re.compile(r"(?<![A-Za-z])([A-Z]+)(?![A-Za-z])")


def _runs(text: str, letters) -> list[str]:
    """Option letters standing alone or as runs ("BCD") in ``text``, in order."""
    return [ch for run in _LETTER_RUN.findall(text) if set(run) <= set(letters) for ch in run]


def _first_line_letters(text: str, options: dict) -> list[str]:
    line = next((s.strip() for s in text.split("\n") if s.strip()), "")
    found = [m.upper() for m in _APOLLO_BRACKET.findall(line) if m.upper() in options]
    found = found or _runs(line, options)
    return found or [k for k, v in options.items() if _plain(v) == _plain(line)]


def _phrase_letters(text: str, options: dict) -> list[str]:
    for pattern, group in ((_CMB_ANSWER, 2), (_EN_ANSWER, 1)):
        m = pattern.search(text)
        found = _runs(m.group(group), options) if m else []
        if found:
            return found
    return []


def extract_answer(text: str, options: dict, multi: bool) -> str | None:
    """The answer letters in a generated reply, or None: CMB's "答案是X" rule (and its English
    counterpart), then Apollo's first-line rules, then CMB's fallback (every option letter in
    the reply). Single-answer: the most frequent letter found (ties: the first); multi-answer:
    the sorted set. A leading reasoning trace (``<think>…</think>``) is not part of the answer."""
    from medtune.inference.reasoning import split_trace

    text = split_trace(text)[1]
    found = _phrase_letters(text, options) or _first_line_letters(text, options) or _runs(text, options)
    if not found:
        return None
    return "".join(sorted(set(found))) if multi else Counter(found).most_common(1)[0][0]
