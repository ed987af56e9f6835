"""Multiple-choice readers: medical benchmarks in their native layouts -> ``choice`` records.

``{"question", "options": {"A": text, ...}, "answer": "A" | "BCD", "context"?, "subject"?}``

Layouts read by format ``choice``:

- Apollo / CMExam: ``options`` one string of ``(A) text`` lines, ``answer`` ``"(D)"`` or ``"(BCD)"``;
- MedQA / MedMCQA / MMLU (medagents): ``options`` an object, ``answer_idx`` the gold letter;
- CMB: ``option`` an object, ``answer`` letters;
- CMMLU CSV: ``Question``, one column per letter, ``Answer``;
- a list of option texts, lettered A, B, ...

Format ``pubmedqa`` reads PQA-L records (``QUESTION``, ``CONTEXTS``, ``final_decision``) as
yes / no / maybe questions (A / B / C, the order Apollo uses).

>>> read_choice({"question": "Q", "options": "(A) x.\\n(B) y.", "answer": "(B)"})["answer"]
'B'
"""

from __future__ import annotations

import re
import string

from medtune.data.readers.formats import Bad, Skip, json_type, register_format

__all__ = ["find_option_lines", "parse_option_lines", "read_choice", "read_pubmedqa"]

_LETTERS = string.ascii_uppercase
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])\s*[\)）.．:：、]\s*(.*)$")
_ANSWER_NOISE = re.compile(r"[\s()（）\[\],，、;；]+")
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def parse_option_lines(text: str) -> dict[str, str]:
    """``"(A) x\\n(B) y"`` / ``"A. x\\nB. y"`` -> ``{"A": "x", "B": "y"}``; continuation lines join
    the option above. Letters must run A, B, C, ... in order."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == _LETTERS[len(options)]:
            options[m.group(1)] = m.group(2).strip()
        elif options and line.strip():
            last = _LETTERS[len(options) - 1]
            options[last] = f"{options[last]}\n{line.strip()}"
        elif line.strip():
            raise Bad(f'field "options" line {line.strip()[:30]!r} is not "(A) text"')
    return options


def find_option_lines(text: str) -> dict[str, str]:
    """Return the options of a question in running text: the last run of one-line ``A. text`` /
    ``(A) text`` lines lettered A, B, C, ... (at least two), or ``{}``. Lines of other text (the
    question, an instruction) may come before or after the run."""
    found: dict[str, str] = {}
    run: dict[str, str] = {}
    for line in text.splitlines():
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == _LETTERS[len(run)]:
            run[m.group(1)] = m.group(2).strip()
            continue
        if len(run) >= 2:
            found = run
        run = {"A": m.group(2).strip()} if m and m.group(1) == "A" else {}
    return run if len(run) >= 2 else found


def _options(rec: dict) -> dict[str, str]:
    value = rec.get("options", rec.get("option", rec.get("Options")))
    if value is None:
        value = {k: rec[k] for k in _LETTERS if k in rec}
    if isinstance(value, str):
        value = parse_option_lines(value)
    elif isinstance(value, list):
        value = dict(zip(_LETTERS, value))
    if not isinstance(value, dict):
        raise Bad(f'field "options" must be an object, a list or "(A) ..." lines, got {json_type(value)}')
    options = {str(k).strip().upper(): v for k, v in value.items()}
    if len(options) < 2:
        raise Bad('field "options" has fewer than two options', keys=list(rec))
    for key, text in options.items():
        if key not in _LETTERS or not isinstance(text, str):
            raise Bad(f'field "options.{key}" must be a letter mapped to a string')
    return {k: v.strip() for k, v in options.items()}


def _answer(rec: dict, options: dict[str, str]) -> str:
    raw = rec.get("answer_idx", rec.get("answer", rec.get("Answer")))
    if not isinstance(raw, str) or not raw.strip():
        raise Bad('field "answer" missing or empty', keys=list(rec))
    letters = _ANSWER_NOISE.sub("", raw)
    if letters and all(a in options for a in letters):
        return "".join(sorted(set(letters)))
    by_text = [k for k, v in options.items() if v.rstrip(".") == raw.strip().rstrip(".")]
    if len(by_text) == 1:
        return by_text[0]
    if letters.isascii() and letters.isupper():
        missing = next(a for a in letters if a not in options)
        raise Bad(f'field "answer" letter "{missing}" is not among the options {", ".join(options)}')
    raise Bad(f'field "answer" {raw!r} is neither option letters nor one option\'s text')


@register_format("choice", "choice")
def read_choice(rec: dict) -> dict:
    """A multiple-choice question in any of the layouts in the module docstring."""
    question = rec.get("question", rec.get("Question"))
    if not isinstance(question, str):
        raise Bad('field "question" missing', keys=list(rec))
    if not question.strip():
        raise Skip("empty question")
    options = _options(rec)
    out = {"question": question.strip(), "options": options, "answer": _answer(rec, options)}
    context = rec.get("context")
    if isinstance(context, list):
        context = "\n".join(str(c) for c in context)
    if isinstance(context, str) and context.strip():
        out["context"] = context.strip()
    subject = rec.get("subject") or rec.get("meta_info") or rec.get("exam_class")
    if isinstance(subject, str) and subject.strip():
        out["subject"] = subject.strip()
    return out


@register_format("pubmedqa", "choice")
def read_pubmedqa(rec: dict) -> dict:
    """PQA-L: ``{QUESTION, CONTEXTS: [...], final_decision: yes|no|maybe}`` -> a 3-option question."""
    question, contexts = rec.get("QUESTION"), rec.get("CONTEXTS")
    if not isinstance(question, str) or not question.strip():
        raise Bad('field "QUESTION" missing or empty', keys=list(rec))
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise Bad('field "CONTEXTS" must be a list of strings', keys=list(rec))
    decision = str(rec.get("final_decision", "")).strip().lower()
    letter = next((k for k, v in PUBMEDQA_OPTIONS.items() if v == decision), None)
    if letter is None:
        raise Bad(f'field "final_decision" must be yes, no or maybe, got {decision!r}')
    return {"question": question.strip(), "options": dict(PUBMEDQA_OPTIONS), "answer": letter,
            "context": "\n".join(contexts), "subject": "pubmedqa"}
