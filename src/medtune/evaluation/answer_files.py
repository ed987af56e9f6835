"""Answer files of several systems to the same prompts, matched by id; CMB-Clin cases.

>>> import json, tempfile
>>> d = Path(tempfile.mkdtemp())
>>> row = {"id": 1, "prompt": "头痛怎么办？"}
>>> _ = (d / "sft.jsonl").write_text(json.dumps({**row, "response": "休息。"}))
>>> _ = (d / "base.jsonl").write_text(json.dumps({**row, "prediction": "喝水。"}))
>>> systems, items = load_items([d / "sft.jsonl", d / "base.jsonl"])
>>> systems, items[0].answers
(['sft', 'base'], {'sft': '休息。', 'base': '喝水。'})

One JSONL per system (name: a ``system`` field, else the file stem, else the parent folder when
stems collide or the file is ``generated_predictions.jsonl``), rows matched across files by
``id``: every file must answer the same prompts (the first mismatch is a one-line error naming
file, line and id). The prompt is ``prompt``, ``question``, ``instruction`` (+ ``input``) or
``messages``; the answer ``response`` (``medtune infer``), ``prediction`` (``medtune eval gen``)
or ``answer``, in that order, so that an ``answer`` kept next to a ``response`` is read as the
reference, like ``reference`` / ``solution``. Optional: ``category``, ``description`` (the case a
``question`` is about). :func:`read_cmb_clin` turns CMB-Clin's ``CMB-test-qa.json`` into rows to
answer (``medtune infer``) that carry the case, question and reference to judge against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data.generate.kg import _BadRow, _json_object, _read_text
from medtune.errors import MedtuneError
from medtune.files import numbered_lines

__all__ = ["CMB_CLIN_PROMPT", "Item", "attach_references", "load_items", "read_answers",
           "read_cmb_clin", "read_references", "require_references"]


@dataclass
class Item:
    """One prompt and every system's answer to it."""

    id: str
    prompt: str
    answers: dict[str, str]  # system -> answer
    category: str = ""
    reference: str | None = None
    description: str | None = None  # the case a question is about (CMB-Clin)
    question: str | None = None  # the question alone, when ``prompt`` also holds the case


# --- reading answers -------------------------------------------------------------------------


@dataclass
class _Answer:
    prompt: str
    answer: str
    line: int
    category: str = ""
    reference: str | None = None
    description: str | None = None
    question: str | None = None
    raw: dict = field(default_factory=dict)


def _render(messages: list[dict]) -> str:
    """A conversation as text: the lone user turn, or every turn with its speaker."""
    if len(messages) == 1:
        return messages[0]["content"].strip()
    names = {"system": "系统", "user": "用户", "assistant": "助手"}
    return "\n".join(f"{names[m['role']]}：{m['content'].strip()}" for m in messages)


def _prompt_text(row: dict) -> str:
    for key in ("prompt", "question"):
        if isinstance(row.get(key), str):
            return row[key].strip()
    if "instruction" in row or "messages" in row:
        from medtune.inference.batch import row_messages

        try:
            return _render(row_messages(row, "row"))
        except MedtuneError as e:
            raise _BadRow(str(e).removeprefix("row: ")) from None
    raise _BadRow('no "prompt", "question", "instruction" or "messages" field')


def _answer_text(row: dict) -> tuple[str, str]:
    """``(field, answer)``: response, prediction or answer, the first that is present."""
    for key in ("response", "prediction", "answer"):
        if key in row:
            if not isinstance(row[key], str):
                raise _BadRow(f'field "{key}" must be a string')
            return key, row[key].strip()
    raise _BadRow('no "response", "prediction" or "answer" field (the answer to judge)')


def _optional(row: dict, *keys: str) -> str | None:
    return next((row[k].strip() for k in keys if isinstance(row.get(k), str)), None)


def _answer_row(row: dict, line: int) -> tuple[str, _Answer]:
    """``(id, answer)`` of one answers row; raises _BadRow."""
    if "id" not in row:
        raise _BadRow('field "id" missing (answers are matched across systems by id)')
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise _BadRow('field "id" must be a string or an integer')
    used, answer = _answer_text(row)
    reference = _optional(row, "reference", "solution", *(("answer",) if used != "answer" else ()))
    question = _optional(row, "question") if isinstance(row.get("prompt"), str) else None
    return str(row["id"]), _Answer(_prompt_text(row), answer, line,
                                   str(row.get("category") or "").strip(), reference,
                                   _optional(row, "description"), question, row)


def read_answers(path) -> tuple[str | None, dict[str, _Answer]]:
    """``(system name from a "system" field or None, {id: answer})`` of one answers JSONL."""
    path = Path(path)
    rows: dict[str, _Answer] = {}
    system = None
    for line, raw in numbered_lines(_read_text(path)):
        try:
            rid, answer = _answer_row(_json_object(raw), line)
        except _BadRow as e:
            raise MedtuneError(f"{path}:{line}: {e}") from None
        if rid in rows:
            raise MedtuneError(f"{path}:{line}: duplicate id {rid!r}")
        rows[rid] = answer
        system = system or (str(answer.raw["system"]) if answer.raw.get("system") else None)
    if not rows:
        raise MedtuneError(f"{path}: no answers")
    return system, rows


_FIXED_NAMES = ("generated_predictions",)  # medtune eval gen's file name: the folder names it


def _system_names(paths: list[Path], declared: list[str | None]) -> list[str]:
    """Each file's system: its ``system`` field, else its stem, else its folder when stems clash
    or the stem is a fixed output name (``generated_predictions``)."""
    stems = [p.stem for p in paths]
    names = [d or (p.stem if stems.count(p.stem) == 1 and p.stem not in _FIXED_NAMES
                   else p.resolve().parent.name) for p, d in zip(paths, declared)]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise MedtuneError(f"{paths[i]}: system name {name!r} also used by "
                               f"{paths[names.index(name)]}; set a \"system\" field in one")
    return names


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _check_match(first: Path, base: dict[str, _Answer], path: Path, rows: dict) -> None:
    """Every file must answer the same prompts under the same ids as the first."""
    for rid, answer in rows.items():
        if rid not in base:
            raise MedtuneError(f"{path}:{answer.line}: id {rid!r} is not in {first}")
        if not _same(answer.prompt, base[rid].prompt):
            raise MedtuneError(f"{path}:{answer.line}: id {rid!r} has another prompt than in "
                               f"{first}:{base[rid].line}; answers are matched by id")
    missing = next((rid for rid in base if rid not in rows), None)
    if missing is not None:
        raise MedtuneError(f"{path}: id {missing!r} missing (it is in {first}:"
                           f"{base[missing].line})")


def _item(rid: str, per_system: dict[str, _Answer]) -> Item:
    """One item from every system's row of an id (first non-empty optional field wins)."""
    rows = list(per_system.values())

    def first(name):
        return next((getattr(r, name) for r in rows if getattr(r, name)), None)

    return Item(rid, rows[0].prompt, {s: r.answer for s, r in per_system.items()},
                first("category") or "", first("reference"), first("description"),
                first("question"))


def load_items(paths: list, limit: int | None = None) -> tuple[list[str], list[Item]]:
    """``(system names, items)`` from one answers JSONL per system, in the first file's order."""
    paths = [Path(p) for p in paths]
    if not 1 <= len(paths) <= 26:
        raise MedtuneError(f"{len(paths)} answer files: judge 1 to 26 systems (labels A-Z)")
    read = [read_answers(p) for p in paths]
    systems = _system_names(paths, [system for system, _ in read])
    base = read[0][1]
    for path, (_, rows) in zip(paths[1:], read[1:]):
        _check_match(paths[0], base, path, rows)
    ids = list(base)[:limit] if limit is not None else list(base)
    return systems, [_item(rid, {s: rows[rid] for s, (_, rows) in zip(systems, read)})
                     for rid in ids]


# --- references (CMB-Clin) -------------------------------------------------------------------

CMB_CLIN_PROMPT = "以下是一位病人的病例：\n{description}\n{question}"  # CMB's README prompt


def _cmb_case(case: dict, where: str) -> list[dict]:
    """The questions of one CMB-Clin case: id ``<case id>-<n>``, description, question, ..."""
    if not isinstance(case.get("description"), str) or not isinstance(case.get("QA_pairs"), list):
        raise MedtuneError(f'{where}: a CMB-Clin case needs "description" and "QA_pairs"')
    out = []
    for n, pair in enumerate(case["QA_pairs"], 1):
        reference = pair.get("solution", pair.get("answer")) if isinstance(pair, dict) else None
        if not isinstance(pair.get("question"), str) or not isinstance(reference, str):
            raise MedtuneError(f'{where}: QA pair {n} needs "question" and "solution" '
                               '(or "answer")')
        description, question = case["description"].strip(), pair["question"].strip()
        out.append({"id": f"{case.get('id')}-{n}", "description": description,
                    "question": question, "reference": reference.strip(),
                    "prompt": CMB_CLIN_PROMPT.format(description=description, question=question)})
    return out


def read_cmb_clin(path) -> list[dict]:
    """CMB-Clin (``CMB-test-qa.json``) as one row per question, ready for ``medtune infer``:
    ``id`` (``<case id>-<question number>``), ``prompt``, ``description``, ``question``,
    ``reference``. Answer files made from these rows carry everything ``cmb-clin`` needs."""
    path = Path(path)
    try:
        cases = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(cases, list):
        raise MedtuneError(f"{path}: expected a JSON array of CMB-Clin cases")
    return [row for i, case in enumerate(cases) for row in _cmb_case(case, f"{path}: case {i}")]


def read_references(path) -> dict[str, dict]:
    """``{id: {"reference", "description"?, "question"?}}`` from CMB-Clin's JSON or a JSONL
    with ``id`` and ``reference`` (or ``solution`` / ``answer``)."""
    path = Path(path)
    if _read_text(path).lstrip()[:1] == "[":
        return {row.pop("id"): row for row in read_cmb_clin(path)}
    out = {}
    for line, raw in numbered_lines(_read_text(path)):
        try:
            row = _json_object(raw)
            reference = _optional(row, "reference", "solution", "answer")
            if "id" not in row or reference is None:
                raise _BadRow('needs "id" and "reference" (or "solution" / "answer")')
        except _BadRow as e:
            raise MedtuneError(f"{path}:{line}: {e}") from None
        out[str(row["id"])] = {"reference": reference, "description": _optional(row, "description"),
                               "question": _optional(row, "question")}
    return out


def attach_references(items: list[Item], references: dict[str, dict], path) -> None:
    """Fill each item's reference (and case, question) from ``references``, by id."""
    for item in items:
        ref = references.get(item.id)
        if ref is None:
            raise MedtuneError(f"{path}: no reference for id {item.id!r}")
        item.reference = ref["reference"]
        item.description = ref.get("description") or item.description
        item.question = ref.get("question") or item.question


def require_references(items: list[Item], where) -> None:
    """cmb-clin scores against a reference: every item needs one."""
    missing = next((item.id for item in items if not item.reference), None)
    if missing is not None:
        raise MedtuneError(f"{where}: id {missing!r} has no reference; --rubric cmb-clin needs "
                           'one: add "reference" to the rows or pass --references CMB-test-qa.json')
