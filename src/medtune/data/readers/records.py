"""The text inside a unified record, whatever its shape: what cleaning, dedup and stats look at.

Unified shapes (see :mod:`medtune.data.readers.formats`): ``text``, ``messages``, ``preference``, ``kto``,
``prompt`` (messages ending with a user turn, for inference and judging) and ``choice``
(``question`` + ``options`` + ``answer``). Records may carry extra metadata keys (``source``,
``id``, ``subject`` ...) which these functions ignore.

>>> rec = {"messages": [{"role": "user", "content": "头痛"}, {"role": "assistant", "content": "休息"}]}
>>> prompt_text(rec), response_text(rec)
('头痛', '休息')
"""

from __future__ import annotations

__all__ = ["ORIGIN", "full_text", "origin", "prompt_text", "record_shape", "response_text", "turn_count"]

ORIGIN = "_where"  # a record read for training keeps its "file:line" here, for error messages only


def origin(rec: dict) -> str:
    """Return the record's ``file:line`` when it was read with ``locate`` (training), else ``""``."""
    return rec.get(ORIGIN, "")


def record_shape(rec: dict) -> str:
    """The shape name of a unified record, from its keys."""
    if "chosen" in rec:
        return "preference"
    if "completion" in rec:
        return "kto"
    if "options" in rec:
        return "choice"
    if "messages" in rec:
        return "messages"
    if "prompt" in rec:
        return "prompt"
    if "text" in rec:
        return "text"
    raise ValueError(f"not a unified record (keys: {', '.join(map(str, rec))})")


def _contents(messages, roles) -> list[str]:
    return [m["content"] for m in messages if m["role"] in roles]


def _choice_options(rec: dict) -> str:
    return "\n".join(f"{k}. {v}" for k, v in rec["options"].items())


def prompt_text(rec: dict) -> str:
    """What the user side says: user (and system) turns, the question and its options; '' for text."""
    shape = record_shape(rec)
    if shape == "messages":
        return "\n".join(_contents(rec["messages"], ("system", "user")))
    if shape in ("preference", "kto", "prompt"):
        return "\n".join(_contents(rec["prompt"], ("system", "user")))
    if shape == "choice":
        parts = [rec.get("context") or "", rec["question"], _choice_options(rec)]
        return "\n".join(p for p in parts if p)
    return ""


def response_text(rec: dict) -> str:
    """What the model is trained to say: assistant turns (chosen for preference), the answer, or
    the whole document for ``text``."""
    shape = record_shape(rec)
    if shape == "messages":
        return "\n".join(_contents(rec["messages"], ("assistant",)))
    if shape == "preference":
        return "\n".join(_contents(rec["chosen"], ("assistant",)))
    if shape == "kto":
        return "\n".join(_contents(rec["completion"], ("assistant",)))
    if shape == "choice":
        return "".join(rec["options"].get(a, a) for a in rec["answer"])
    if shape == "prompt":
        return ""
    return rec["text"]


def full_text(rec: dict) -> str:
    """Prompt and response together (rejected answers included), for dedup and decontamination."""
    parts = [prompt_text(rec), response_text(rec)]
    if record_shape(rec) == "preference":
        parts.append("\n".join(_contents(rec["rejected"], ("assistant",))))
    return "\n".join(p for p in parts if p)


def turn_count(rec: dict) -> int:
    """User turns in the record (1 for single-turn, 0 for plain text)."""
    shape = record_shape(rec)
    if shape == "messages":
        return len(_contents(rec["messages"], ("user",)))
    if shape in ("preference", "kto", "prompt"):
        return len(_contents(rec["prompt"], ("user",)))
    return 1 if shape == "choice" else 0


def parse_object_line(line: str, where: str) -> dict:
    """Return one JSONL line as a dict; raise a ``MedtuneError`` naming ``where`` (file:line)."""
    import json

    from medtune.errors import MedtuneError

    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MedtuneError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise MedtuneError(f"{where}: a row must be a JSON object")
    return row
