"""Multiple-choice questions → open-ended problems with a reference answer, for verifier RL.

HuatuoGPT-o1 turns exam questions into open problems whose answer a verifier can check, then
trains with that reward. Here a ``choice`` record (CMB, CMExam, MedQA, ... as
:mod:`medtune.data.readers.choice` reads them) becomes a ``messages`` record: the question (after
its context) as the user turn, the right option's text as the assistant turn — the ``reference``
that stage grpo's ``answer_match`` reward checks. The letter and the options are kept under
``meta``. A question that cannot stand without its options is **skipped and counted**, never
rephrased: turning "下列哪项是偏头痛的禁忌" into an open question by rule would guess at meaning,
and a wrong reference teaches the wrong fact. The skip reasons (:data:`SKIPS`):

- the question needs its options: "下列/以下/如下 …", "which of the following", "选项";
- it asks for the odd one out: "不包括", "除外", "错误的是", "except", "not true", ...;
- the answer names other options: "以上都是", "all of the above", "A和B";
- several right options (multi-select);
- the answer text is inside another option's text ("头痛" / "偏头痛"): answer_match, which
  accepts a reply containing the reference, would reward the wrong option;
- two options with the same text; an answer longer than ``max_answer_chars``.

A record whose answer letter is not among its options never gets here: the reader refuses it
(``file:line: field "answer" letter "E" is not among the options``), counted as a skip, or
stopping the run under ``--strict``.

>>> rec = {"question": "偏头痛应到哪个科室就诊？", "options": {"A": "神经内科", "B": "骨科"},
...        "answer": "A"}
>>> problem, why = to_verifiable(rec)
>>> problem["messages"][1]["content"], problem["meta"]["answer_letter"], why
('神经内科', 'A', None)
>>> to_verifiable({**rec, "question": "下列哪项是偏头痛的就诊科室？"})[1]
'question needs its options (which of the following ...)'

``medtune data generate verifiable cmexam_test.jsonl -o verifiable.jsonl``
"""

from __future__ import annotations

import re

from medtune.data.clean.dedup import normalize_text

__all__ = ["MAX_ANSWER_CHARS", "SKIPS", "to_verifiable"]

MAX_ANSWER_CHARS = 40  # a longer option text is rarely reproduced closely enough to match

_QUANTITY = r"(?<![0-9０-９一二三四五六七八九十百千万岁周月年天次个级度])"
_NEEDS_OPTIONS = re.compile(
    _QUANTITY + r"(下列|以下|如下)|选项|备选|上述|\b(which|what) (one )?of the following\b|\bthe following\b"
    r"|\bthe options?\b", re.IGNORECASE)
_ODD_ONE_OUT = re.compile(
    r"不包括|除外|除了|不属于|不正确|不恰当|不符合|不应|不宜|错误的是|不是|有误|\bexcept\b|\bnot true\b"
    r"|\bincorrect\b|\bfalse\b|\bleast likely\b|\bnot (a|an|the|associated|used|seen|found|true|correct)\b",
    re.IGNORECASE)
_NAMES_OPTIONS = re.compile(
    r"以上|上述|\b(all|none|both|neither) of the (above|options)\b"
    r"|(?-i:^[A-E]$|(?<![A-Za-z])[A-E]\s*(和|与|及|、|,|and|&|or)\s*[A-E](?![A-Za-z]))", re.IGNORECASE)

SKIPS = {
    "needs_options": "question needs its options (which of the following ...)",
    "odd_one_out": "question asks for the odd one out (not / except ...)",
    "names_options": "answer names other options (all of the above ...)",
    "multi": "several right options (multi-select)",
    "inside_other": "answer text is inside another option (answer_match would accept it)",
    "same_text": "two options with the same text",
    "long": "answer longer than the --max-answer-chars limit",
    "empty": "answer option is empty",
}


def _why_not(question: str, options: dict[str, str], letter: str, max_chars: int) -> str | None:
    """The :data:`SKIPS` key saying why a question cannot be an open problem, or None."""
    if len(letter) > 1:
        return "multi"
    answer = options[letter]
    norm = {k: normalize_text(v) for k, v in options.items()}
    if not norm[letter]:
        return "empty"
    if _NEEDS_OPTIONS.search(question):
        return "needs_options"
    if _ODD_ONE_OUT.search(question):
        return "odd_one_out"
    if _NAMES_OPTIONS.search(answer):
        return "names_options"
    if len(set(norm.values())) < len(norm):
        return "same_text"
    if any(norm[letter] in text for k, text in norm.items() if k != letter):
        return "inside_other"
    if len(answer) > max_chars:
        return "long"
    return None


def to_verifiable(record: dict, max_answer_chars: int = MAX_ANSWER_CHARS,
                  instruction: str = "") -> tuple[dict | None, str | None]:
    """``(messages record, None)`` for a ``choice`` record that makes an open problem, else
    ``(None, reason)`` with the reason from :data:`SKIPS`. ``instruction`` is appended to the
    question (e.g. "请直接给出答案。")."""
    options, letter = record["options"], record["answer"]
    why = _why_not(record["question"], options, letter, max_answer_chars)
    if why is not None:
        return None, SKIPS[why]
    question = record["question"]
    if record.get("context"):
        question = f"{record['context']}\n\n{question}"
    if instruction:
        question = f"{question}\n{instruction}"
    meta = {"answer_letter": letter, "options": options}
    meta.update({k: record[k] for k in ("id", "subject") if k in record})
    out = {"messages": [{"role": "user", "content": question},
                        {"role": "assistant", "content": options[letter]}],
           "meta": meta}
    if "source" in record:
        out["source"] = record["source"]
    return out, None
