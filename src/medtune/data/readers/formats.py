"""Data readers: every supported source layout turned into one of a few unified record shapes.

Shapes (one dict per record):

- ``text``:       ``{"text": str}``
- ``messages``:   ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` —
  optional system first, then user/assistant alternating, ending with an assistant turn.
- ``preference``: ``{"prompt": [messages ending with a user turn], "chosen": [assistant msg],
  "rejected": [assistant msg]}`` (TRL's conversational preference format).
- ``kto``:        ``{"prompt": [messages ending with a user turn], "completion": [assistant msg],
  "label": bool}`` (unpaired feedback: was this answer desirable?).
- ``prompt``:     ``{"prompt": [messages ending with a user turn]}`` (inference / eval inputs).
- ``choice``:     ``{"question", "options": {"A": ...}, "answer": "A"|"BCD"}`` (see
  :mod:`medtune.data.readers.choice`).
- ``label``:      ``{"id", "answer"}`` (an answer key such as PubMedQA's test_ground_truth.json).

Formats are small functions ``record dict -> unified dict`` registered by name with
:func:`register_format`. A reader raises ``Bad`` for a problem the user must fix (it becomes a
one-line :class:`~medtune.errors.MedtuneError` naming ``file:line``, the field and the format, or
a counted skip under ``medtune data``'s default policy) and ``Skip`` for a well-formed but empty
record (counted in :attr:`FileData.skipped`, never dropped silently).

Files are found, decoded and split into rows by :mod:`medtune.data.readers.stream` (JSONL, JSON arrays,
keyed JSON objects, ``.txt``, CSV / TSV, Parquet; UTF-8, UTF-16, GB18030).

>>> read_alpaca({"instruction": "头痛怎么办", "output": "休息"})["messages"][1]
{'role': 'assistant', 'content': '休息'}
"""

from __future__ import annotations

from collections.abc import Callable

from medtune.errors import MedtuneError, did_you_mean

__all__ = [
    "FORMATS",
    "READERS",
    "SHAPES",
    "detect_format",
    "register_format",
]

READERS: dict[str, Callable[[dict], dict]] = {}
SHAPES: dict[str, str] = {}
FORMATS: tuple[str, ...] = ()

_ROLES = ("system", "user", "assistant")
_FROM = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_MAX_KEYS = 12


class Bad(Exception):
    """A record problem the user must fix; ``keys`` (the record's) is shown for a missing field."""

    def __init__(self, message: str, keys=None):
        super().__init__(message)
        self.keys = keys


class Skip(Exception):
    """A well-formed but empty record; ``reason`` is the key counted in ``FileData.skipped``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def register_format(name: str, shape: str):
    """Decorator: register ``fn(record) -> unified record`` as format ``name`` producing ``shape``."""
    if shape not in ("text", "messages", "preference", "kto", "prompt", "choice", "label"):
        raise ValueError(f"unknown shape {shape!r}")

    def deco(fn):
        global FORMATS
        READERS[name] = fn
        SHAPES[name] = shape
        FORMATS = tuple(READERS)
        return fn

    return deco


# ---------------------------------------------------------------------------------------------
# field helpers


def json_type(value) -> str:
    """JSON name of ``value``'s type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _get(rec: dict, key: str, kind=str, required: bool = True, label: str | None = None):
    """Return ``rec[key]`` checked to be ``kind``; ``None`` when optional and absent/null."""
    label = label or key
    value = rec.get(key)
    if value is None and (not required or key not in rec):
        if required:
            raise Bad(f'field "{label}" missing', keys=list(rec))
        return None
    if not isinstance(value, kind):
        article = "an object" if kind is dict else f"a {json_type(kind())}"
        raise Bad(f'field "{label}" must be {article}, got {json_type(value)}')
    return value


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _turns(turns: list, label: str, role_key: str, text_key: str, roles: dict) -> list[dict]:
    """Turn dicts -> messages, checking types; ``roles`` maps the source's role names to ours."""
    out = []
    for i, turn in enumerate(turns):
        name = f"{label}[{i}]"
        if not isinstance(turn, dict):
            raise Bad(f'field "{name}" must be an object, got {json_type(turn)}')
        role = _get(turn, role_key, label=f"{name}.{role_key}")
        if role not in roles:
            raise Bad(
                f'field "{name}.{role_key}" has unknown value {role!r}' + did_you_mean(role, roles)
            )
        out.append(_msg(roles[role], _get(turn, text_key, label=f"{name}.{text_key}")))
    return out


def _sharegpt_turns(turns: list, label: str) -> list[dict]:
    """``[{"from", "value"}, ...]`` -> messages."""
    return _turns(turns, label, "from", "value", _FROM)


def _message_turns(turns: list, label: str) -> list[dict]:
    """``[{"role", "content", "reasoning_content"?}, ...]`` -> messages (a reasoning trace kept;
    the tokenizer refuses one on a non-assistant turn, naming the conversation)."""
    msgs = _turns(turns, label, "role", "content", {r: r for r in _ROLES})
    for i, (turn, msg) in enumerate(zip(turns, msgs)):
        trace = turn.get("reasoning_content")
        if trace is not None:
            if not isinstance(trace, str):
                raise Bad(f'field "{label}[{i}].reasoning_content" must be a string, got {json_type(trace)}')
            msg["reasoning_content"] = trace
    return msgs


def _check_turns(msgs: list[dict], label: str, last: str = "assistant") -> list[dict]:
    """Check ``[system?] user assistant user ...`` ending with ``last``; drop an empty system turn.

    Structural problems raise ``Bad`` (indices are those of ``label``); empty turns ``Skip``.
    """
    start = 1 if msgs and msgs[0]["role"] == "system" else 0
    for i, m in enumerate(msgs[start:], start):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != want:
            raise Bad(
                f'field "{label}[{i}]" is {"an" if m["role"] == "assistant" else "a"} {m["role"]} turn, expected {want} '
                "(an optional system turn first, then user/assistant alternating)"
            )
    if start and not msgs[0]["content"].strip():
        msgs = msgs[1:]
        start = 0
    if len(msgs) == start:
        raise Skip("empty conversation")
    if msgs[-1]["role"] != last:
        raise Bad(
            f'field "{label}" must end with a{"n" if last[0] == "a" else ""} {last} turn '
            f"(the last is a {msgs[-1]['role']} turn)"
        )
    if any(not m["content"].strip() for m in msgs):
        raise Skip("empty turn")
    return msgs


def _with_system(rec: dict, msgs: list[dict], label: str) -> list[dict]:
    """Prepend a top-level ``system`` string, if any and non-empty."""
    system = _get(rec, "system", required=False)
    if system is None or not system.strip():
        return msgs
    if msgs and msgs[0]["role"] == "system":
        raise Bad(f'field "system" given twice (top-level and as the first turn of "{label}")')
    return [_msg("system", system)] + msgs


# ---------------------------------------------------------------------------------------------
# readers


@register_format("alpaca", "messages")
def read_alpaca(rec: dict) -> dict:
    """``{instruction, input?, output, system?, history?: [[user, assistant], ...]}``."""
    instruction, output = _get(rec, "instruction"), _get(rec, "output")
    extra = _get(rec, "input", required=False) or ""
    system = _get(rec, "system", required=False) or ""
    msgs = [_msg("system", system)] if system.strip() else []
    for i, pair in enumerate(_get(rec, "history", list, required=False) or []):
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2
        if not ok or not all(isinstance(x, str) for x in pair):
            raise Bad(f'field "history[{i}]" must be a [user, assistant] pair of strings')
        msgs += [_msg("user", pair[0]), _msg("assistant", pair[1])]
    if not output.strip():
        raise Skip("empty output")
    user = "\n".join(part for part in (instruction, extra) if part.strip())
    if not user:
        raise Skip("empty instruction")
    if any(not m["content"].strip() for m in msgs):
        raise Skip("empty history turn")
    return {"messages": msgs + [_msg("user", user), _msg("assistant", output)]}


@register_format("sharegpt", "messages")
def read_sharegpt(rec: dict) -> dict:
    """``{"conversations": [{"from": "human"|"gpt"|..., "value"}], "system"?}``."""
    turns = _sharegpt_turns(_get(rec, "conversations", list), "conversations")
    msgs = _check_turns(turns, "conversations")
    return {"messages": _with_system(rec, msgs, "conversations")}


@register_format("messages", "messages")
def read_messages(rec: dict) -> dict:
    """OpenAI chat: ``{"messages": [{"role", "content"}, ...]}``."""
    turns = _message_turns(_get(rec, "messages", list), "messages")
    return {"messages": _check_turns(turns, "messages")}


@register_format("huatuo-o1", "messages")
def read_huatuo_o1(rec: dict) -> dict:
    """HuatuoGPT-o1 SFT data (FreedomIntelligence/medical-o1-reasoning-SFT):
    ``{Question, Complex_CoT, Response}`` -> one turn whose reply carries the chain of thought as
    ``reasoning_content`` (learned, masked or dropped per ``data.reasoning``)."""
    question, trace, answer = _get(rec, "Question"), _get(rec, "Complex_CoT"), _get(rec, "Response")
    if not question.strip():
        raise Skip("empty Question")
    if not answer.strip():
        raise Skip("empty Response")
    reply = _msg("assistant", answer) | ({"reasoning_content": trace} if trace.strip() else {})
    return {"messages": _with_system(rec, [_msg("user", question), reply], "Question")}


@register_format("text", "text")
def read_text(rec: dict) -> dict:
    """``{"text": str}`` (also each non-blank line of a ``.txt`` file)."""
    text = _get(rec, "text")
    if not text.strip():
        raise Skip("empty text")
    return {"text": text}


def _pref_prompt(rec: dict) -> list[dict]:
    """The prompt messages of a preference record, in any of the accepted layouts."""
    try:
        if "question" in rec or "response_chosen" in rec:
            label, msgs = "question", [_msg("user", _get(rec, "question"))]
        elif "user_input" in rec:
            label, msgs = "user_input", [_msg("user", _get(rec, "user_input"))]
        elif "conversations" in rec:
            label = "conversations"
            msgs = _sharegpt_turns(_get(rec, label, list), label)
        elif isinstance(rec.get("prompt"), list):
            label, msgs = "prompt", _message_turns(rec["prompt"], "prompt")
        else:
            label, msgs = "prompt", [_msg("user", _get(rec, "prompt"))]
        return _with_system(rec, _check_turns(msgs, label, last="user"), label)
    except Skip:
        raise Skip("empty prompt") from None


def _pref_answer(rec: dict, key: str) -> list[dict]:
    """``chosen``/``rejected``: a string, or a list of assistant messages."""
    value = rec.get(key)
    if isinstance(value, list):
        msgs = _message_turns(value, key)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                raise Bad(f'field "{key}[{i}].role" must be assistant, got {m["role"]!r}')
    else:
        msgs = [_msg("assistant", _get(rec, key))]
    if not msgs or any(not m["content"].strip() for m in msgs):
        raise Skip(f"empty {key.removeprefix('response_')}")
    return msgs


# Answer-key pairs of each preference layout: (chosen, rejected). Ranked comparisons
# (GPT-4-LLM comparison_data) put the better completion first.
_PREF_KEYS = (("response_chosen", "response_rejected"), ("completion_a", "completion_b"),
              ("chosen", "rejected"))


@register_format("preference", "preference")
def read_preference(rec: dict) -> dict:
    """``{conversations, chosen, rejected}``, ``{question, response_chosen, response_rejected}``,
    ``{user_input, completion_a, completion_b}`` (a ranked above b) or ``{prompt, chosen, rejected}``
    (strings or message lists)."""
    keys = next((k for k in _PREF_KEYS if k[0] in rec or k[1] in rec), _PREF_KEYS[-1])
    prompt = _pref_prompt(rec)
    chosen, rejected = (_pref_answer(rec, k) for k in keys)
    if chosen == rejected:
        raise Bad(f'fields "{keys[0]}" and "{keys[1]}" are identical (a pair teaches nothing)')
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# Single-turn prompt/response pairs under the column names the seeds use: ADGEN (P-Tuning v2),
# ChatGLM-Med, query/response dumps, question/answer sets, Zhongjing's safety rows, the Toyhom
# doctor-dialogue CSVs, HuatuoGPT's Med-dialog eval. The first pair present wins.
PAIR_COLUMNS = (("content", "summary"), ("context", "target"), ("query", "response"),
                ("question", "answer"), ("prompt", "response"), ("input", "output"),
                ("instruct", "output"), ("ask", "answer"), ("medical_case", "doctor_diagnosis"))


@register_format("pair", "messages")
def read_pair(rec: dict) -> dict:
    """``{content, summary}``, ``{context, target}``, ``{query, response}``, ``{question, answer}``,
    ``{prompt, response}`` or ``{input, output}``: one user turn and one answer."""
    for prompt_key, answer_key in PAIR_COLUMNS:
        if prompt_key in rec and answer_key in rec:
            prompt, answer = _get(rec, prompt_key), _get(rec, answer_key)
            if not prompt.strip():
                raise Skip(f"empty {prompt_key}")
            if not answer.strip():
                raise Skip(f"empty {answer_key}")
            msgs = [_msg("user", prompt), _msg("assistant", answer)]
            return {"messages": _with_system(rec, msgs, prompt_key)}
    pairs = ", ".join("/".join(p) for p in PAIR_COLUMNS)
    raise Bad(f"no prompt/response column pair found (expected one of {pairs})", keys=list(rec))


@register_format("kto", "kto")
def read_kto(rec: dict) -> dict:
    """``{prompt, completion, label}``: ``label`` true for a desirable answer, false otherwise."""
    prompt = _pref_prompt(rec)
    completion = _pref_answer(rec, "completion")
    label = rec.get("label")
    if not isinstance(label, bool):
        raise Bad(f'field "label" must be true or false, got {json_type(label)}', keys=list(rec))
    return {"prompt": prompt, "completion": completion, "label": label}


@register_format("prompt", "prompt")
def read_prompt(rec: dict) -> dict:
    """A prompt without an answer (inference inputs, eval prompts): ``{messages}`` ending with a user
    turn, ``{prompt}`` (string or messages), ``{query}``, or ``{instruction, input?}``."""
    if "messages" in rec:
        label, msgs = "messages", _message_turns(_get(rec, "messages", list), "messages")
    elif isinstance(rec.get("prompt"), list):
        label, msgs = "prompt", _message_turns(rec["prompt"], "prompt")
    else:
        label = next((k for k in ("prompt", "query", "instruction") if k in rec), "prompt")
        text = _get(rec, label)
        if label == "instruction" and (_get(rec, "input", required=False) or "").strip():
            text = f"{text}\n{rec['input']}"
        msgs = [_msg("user", text)]
    return {"prompt": _with_system(rec, _check_turns(msgs, label, last="user"), label)}


@register_format("cmb-clin", "messages")
def read_case_qa(rec: dict) -> dict:
    """CMB-Clin case: ``{title?, description, QA_pairs: [{question, answer|solution}]}`` -> one
    dialogue whose first user turn carries the case description."""
    description = _get(rec, "description")
    msgs = []
    for i, qa in enumerate(_get(rec, "QA_pairs", list)):
        if not isinstance(qa, dict):
            raise Bad(f'field "QA_pairs[{i}]" must be an object, got {json_type(qa)}')
        answer_key = "solution" if "solution" in qa and "answer" not in qa else "answer"
        question = _get(qa, "question", label=f"QA_pairs[{i}].question")
        msgs += [_msg("user", f"{description}\n\n{question}" if i == 0 else question),
                 _msg("assistant", _get(qa, answer_key, label=f"QA_pairs[{i}].{answer_key}"))]
    return {"messages": _check_turns(msgs, "QA_pairs")}


@register_format("label", "label")
def read_label(rec: dict) -> dict:
    """An answer key row ``{id, answer}`` (PubMedQA's test_ground_truth.json maps id -> label)."""
    answer = rec.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise Bad('field "answer" must be a non-empty string', keys=list(rec))
    return {"id": str(rec.get("id")), "answer": answer}


# ---------------------------------------------------------------------------------------------
# detection and file parsing

_DETECT: list[tuple[tuple[str, ...], str]] = [
    (("chosen", "rejected"), "preference"),
    (("response_chosen",), "preference"),
    (("chosen",), "preference"),  # so a record missing "rejected" gets that message, not "cannot detect"
    (("rejected",), "preference"),
    (("user_input", "completion_a"), "preference"),
    (("completion", "label"), "kto"),
    (("QUESTION", "final_decision"), "pubmedqa"),
    (("Question", "Complex_CoT", "Response"), "huatuo-o1"),
    (("question", "options"), "choice"),
    (("question", "option"), "choice"),
    (("Question", "Answer"), "choice"),
    (("description", "QA_pairs"), "cmb-clin"),
    (("conversations",), "sharegpt"),
    (("messages",), "messages"),
    (("instruction", "output"), "alpaca"),
    (("text",), "text"),
    *((cols, "pair") for cols in PAIR_COLUMNS),
    (("query",), "prompt"),
    (("prompt",), "prompt"),
    (("id", "answer"), "label"),
]


def detect_format(record) -> str | None:
    """The format name implied by a record's keys, or ``None``."""
    if not isinstance(record, dict):
        return None
    for keys, name in _DETECT:
        if all(k in record for k in keys):
            return name
    return None


def keys_text(keys) -> str:
    keys = [str(k) for k in keys]
    more = f", … ({len(keys)} keys)" if len(keys) > _MAX_KEYS else ""
    return ", ".join(keys[:_MAX_KEYS]) + more


def format_name(fmt) -> str:
    name = "auto" if fmt is None else str(fmt).strip().lower()
    if name != "auto" and name not in READERS:
        raise MedtuneError(f"unknown format {str(fmt)!r}" + did_you_mean(name, (*FORMATS, "auto")))
    return name
