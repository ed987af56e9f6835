"""Instruction data generators: knowledge-graph triples → Q&A, passages → grounded Q&A via an LLM.

Two ways to make medical instruction data without hand-writing it:

- :func:`kg_to_qa` turns knowledge-graph triples (HuaTuo built its instructions from CMeKG) into
  question/answer records with relation-specific templates, all tails of a (head, relation) in one
  answer;
- :class:`PassageQAGenerator` asks any OpenAI-compatible endpoint to write Q&A pairs grounded in a
  passage (Ziya TCM's knowledge-guided generation) and keeps a pair only when its answer is
  supported by the passage.

>>> triples = [("糖尿病", "症状", "多饮"), ("糖尿病", "临床表现", "多尿")]
>>> rec = next(kg_to_qa(triples, phrasings=1))
>>> rec["messages"][1]["content"]
'糖尿病的常见症状包括：多饮、多尿。'

Passage generation (server at http://127.0.0.1:8000/v1, e.g. ``vllm serve`` or ``medtune serve``)::

    gen = PassageQAGenerator("http://127.0.0.1:8000/v1", "qwen", cache_dir=Path("runs/qa-cache"))
    records = list(gen.run(read_passages("textbook.txt")))
    print(gen.summary)   # passages, requests, cache_hits, failed, pairs_kept, tokens ...

Both produce unified ``messages`` records (see :mod:`medtune.data.formats`).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import random
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

from medtune.data.quality import detect_language
from medtune.data.stream import check_readable, detect_encoding
from medtune.errors import MedtuneError, where

__all__ = [
    "PROMPT_VERSION",
    "PassageQAGenerator",
    "UnparsableReply",
    "canonical_relation",
    "content_units",
    "group_triples",
    "kg_to_qa",
    "parse_qa_pairs",
    "read_passages",
    "read_triples",
    "support",
    "urllib_transport",
]

OnSkip = Callable[[int, str], None]
# transport(url, body, headers, timeout) -> (status, response headers, body); raises OSError
# (TimeoutError included) when no HTTP reply arrives.
Transport = Callable[[str, bytes, dict, float], "tuple[int, Mapping[str, str], bytes]"]

_LANGS = ("auto", "zh", "en")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _check_lang(lang: str) -> str:
    if lang not in _LANGS:
        raise MedtuneError(f"lang {lang!r} not supported (choose from {', '.join(_LANGS)})")
    return lang


def _report(path: Path, line: int, reason: str, on_skip: OnSkip | None) -> None:
    """Raise ``file:line: reason``, or hand the problem to ``on_skip`` (lenient mode)."""
    if on_skip is None:
        raise MedtuneError(f"{where(path, line)}: {reason}")
    on_skip(line, reason)


def _read_text(path: Path) -> str:
    """The whole file as text in its detected encoding (UTF-8/16, GB18030), BOM removed."""
    check_readable(path)
    encoding = detect_encoding(path)
    data = path.read_bytes()
    try:
        return data.decode(encoding).lstrip("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        byte = f"byte 0x{data[e.start]:02x}"
        raise MedtuneError(f"{where(path, line)}: not {encoding} text ({byte}); "
                           "re-save the file as UTF-8") from None


def _is_jsonl(path: Path, text: str) -> bool:
    """Whether ``path`` holds JSON lines (by suffix, else by its first character)."""
    suffix = path.suffix.lower()
    if suffix in (".txt", ".csv", ".tsv"):
        return False
    if text.lstrip()[:1] == "[":
        raise MedtuneError(f"{path}: a JSON array; write one JSON object per line (JSONL)")
    return suffix in (".jsonl", ".json") or text.lstrip()[:1] == "{"


def _nonblank_lines(text: str) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, line


class _BadRow(Exception):
    """A row problem; the message is the reason without ``file:line``."""


def _json_object(line: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise _BadRow(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise _BadRow(f"expected a JSON object, got {type(value).__name__}")
    return value


# --- triples ---------------------------------------------------------------------------------

_TRIPLE_FIELDS = ("head", "relation", "tail")
_COLUMN_ALIASES = {
    "head": ("head", "subject", "实体1", "头实体", "entity1"),
    "relation": ("relation", "predicate", "关系", "rel"),
    "tail": ("tail", "object", "实体2", "尾实体", "entity2"),
}


def _field(record: dict, name: str) -> str:
    """The stripped value of triple field ``name`` (under any alias) in ``record``."""
    keys = {str(k).strip().lower(): v for k, v in record.items()}
    value = next((keys[a] for a in _COLUMN_ALIASES[name] if a in keys), None)
    if value is None:
        raise _BadRow(f'field "{name}" missing')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _BadRow(f'field "{name}" must be a string, got {type(value).__name__}')
    if not value.strip():
        raise _BadRow(f'field "{name}" empty')
    return value.strip()


def _table_columns(path: Path, line: int, header: list[str]) -> dict[str, int]:
    """Column index of head/relation/tail in a CSV/TSV header, by alias."""
    names = [h.strip().lower() for h in header]
    columns = {}
    for field_name, aliases in _COLUMN_ALIASES.items():
        index = next((names.index(a) for a in aliases if a in names), None)
        if index is None:
            raise MedtuneError(
                f'{where(path, line)}: no "{field_name}" column (header has: {", ".join(header)}; '
                f"accepted names: {', '.join(aliases)})"
            )
        columns[field_name] = index
    return columns


def _table_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """``(line, {head, relation, tail})`` per CSV/TSV row; a short row lacks its last fields."""
    first = next((line for _, line in _nonblank_lines(text)), "")
    tab = path.suffix.lower() == ".tsv" or (path.suffix.lower() != ".csv" and "\t" in first)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tab else ",")
    columns = None
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if columns is None:
            columns = _table_columns(path, reader.line_num, row)
            continue
        yield reader.line_num, {k: row[i] for k, i in columns.items() if i < len(row)}


def read_triples(path, on_skip: OnSkip | None = None) -> Iterator[tuple[str, str, str]]:
    """Yield ``(head, relation, tail)`` from a CSV/TSV with a header or a JSONL file.

    Columns/keys may be named head/relation/tail, subject/predicate/object or 实体1/关系/实体2.
    A bad row (missing field, empty value, invalid JSON) raises ``MedtuneError("file:line: field
    "tail" missing")``; with ``on_skip`` it is reported as ``on_skip(line, reason)`` and skipped.
    """
    path = Path(path)
    text = _read_text(path)
    rows = _nonblank_lines(text) if _is_jsonl(path, text) else _table_rows(path, text)
    for line, row in rows:
        try:
            record = _json_object(row) if isinstance(row, str) else row
            yield tuple(_field(record, name) for name in _TRIPLE_FIELDS)
        except _BadRow as e:
            _report(path, line, str(e), on_skip)


# --- knowledge graph → Q&A -------------------------------------------------------------------

# canonical relation -> {lang: (question phrasings, answer)}; {tails} is the joined tail list.
_TEMPLATES: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "symptom": {
        "zh": (("{head}有哪些症状？", "{head}的常见症状是什么？", "得了{head}会有什么表现？",
                "{head}的临床表现有哪些？"), "{head}的常见症状包括：{tails}。"),
        "en": (("What are the symptoms of {head}?", "What are the common symptoms of {head}?",
                "How does {head} present clinically?", "What signs suggest {head}?"),
               "Common symptoms of {head} include: {tails}."),
    },
    "cause": {
        "zh": (("{head}的病因是什么？", "什么原因会导致{head}？", "{head}是怎么引起的？",
                "为什么会得{head}？"), "{head}的病因包括：{tails}。"),
        "en": (("What causes {head}?", "What is the cause of {head}?", "Why does {head} develop?",
                "What leads to {head}?"), "Causes of {head} include: {tails}."),
    },
    "treatment": {
        "zh": (("{head}怎么治疗？", "{head}的治疗方法有哪些？", "得了{head}该如何治疗？",
                "{head}有什么治疗方案？"), "{head}的治疗方法包括：{tails}。"),
        "en": (("How is {head} treated?", "What are the treatment options for {head}?",
                "What is the treatment for {head}?"),
               "Treatment options for {head} include: {tails}."),
    },
    "drug": {
        "zh": (("{head}吃什么药？", "{head}常用哪些药物治疗？", "治疗{head}可以用什么药？",
                "{head}的药物治疗有哪些？"), "{head}的常用治疗药物包括：{tails}。"),
        "en": (("What drugs are used to treat {head}?", "Which medications are given for {head}?",
                "What medicine should be taken for {head}?"),
               "Drugs commonly used for {head} include: {tails}."),
    },
    "examination": {
        "zh": (("{head}需要做哪些检查？", "怀疑{head}应该做什么检查？", "{head}怎么检查确诊？",
                "诊断{head}需要哪些辅助检查？"), "{head}的相关检查包括：{tails}。"),
        "en": (("What tests are needed for {head}?", "How is {head} diagnosed?",
                "Which examinations are used to check for {head}?"),
               "Examinations for {head} include: {tails}."),
    },
    "complication": {
        "zh": (("{head}有哪些并发症？", "{head}会引起什么并发症？", "{head}可能导致哪些并发症？"),
               "{head}的并发症包括：{tails}。"),
        "en": (("What are the complications of {head}?", "What complications can {head} cause?",
                "What can {head} lead to?"), "Complications of {head} include: {tails}."),
    },
    "department": {
        "zh": (("{head}挂什么科？", "{head}应该去哪个科室就诊？", "得了{head}看哪个科？"),
               "{head}一般到{tails}就诊。"),
        "en": (("Which department treats {head}?", "Which specialist should I see for {head}?",
                "Where should a patient with {head} seek care?"),
               "Patients with {head} are usually seen in: {tails}."),
    },
    "risk_group": {
        "zh": (("哪些人容易得{head}？", "{head}的易感人群有哪些？", "{head}好发于哪些人群？"),
               "{head}的易感人群包括：{tails}。"),
        "en": (("Who is at risk of {head}?", "Which people are most susceptible to {head}?",
                "Who tends to get {head}?"), "People susceptible to {head} include: {tails}."),
    },
    "risk_factor": {
        "zh": (("{head}的高危因素有哪些？", "哪些因素会增加{head}的风险？",
                "{head}的危险因素是什么？"),
               "{head}的高危因素包括：{tails}。"),
        "en": (("What are the risk factors for {head}?", "What increases the risk of {head}?",
                "Which factors predispose to {head}?"),
               "Risk factors for {head} include: {tails}."),
    },
    "transmission": {
        "zh": (("{head}是怎么传播的？", "{head}的传播途径有哪些？", "{head}通过什么途径传染？"),
               "{head}的传播途径包括：{tails}。"),
        "en": (("How is {head} transmitted?", "How does {head} spread?",
                "What are the routes of transmission of {head}?"),
               "{head} is transmitted through: {tails}."),
    },
    "prevention": {
        "zh": (("如何预防{head}？", "{head}的预防措施有哪些？", "怎样才能避免得{head}？"),
               "预防{head}的措施包括：{tails}。"),
        "en": (("How can {head} be prevented?", "What are the ways to prevent {head}?",
                "How do I avoid getting {head}?"), "Ways to prevent {head} include: {tails}."),
    },
    "site": {
        "zh": (("{head}发生在什么部位？", "{head}的发病部位在哪里？", "{head}主要累及哪些部位？"),
               "{head}的发病部位包括：{tails}。"),
        "en": (("Where in the body does {head} occur?", "Which body sites does {head} affect?",
                "What part of the body is involved in {head}?"), "{head} affects: {tails}."),
    },
    "contraindication": {
        "zh": (("{head}有哪些禁忌？", "哪些情况下不能使用{head}？", "{head}的禁忌证是什么？"),
               "{head}的禁忌包括：{tails}。"),
        "en": (("What are the contraindications of {head}?", "When should {head} not be used?",
                "Who should avoid {head}?"), "Contraindications of {head} include: {tails}."),
    },
    "side_effect": {
        "zh": (("{head}有哪些副作用？", "{head}的不良反应是什么？",
                "使用{head}可能出现哪些不良反应？"),
               "{head}的不良反应包括：{tails}。"),
        "en": (("What are the side effects of {head}?", "What adverse reactions can {head} cause?",
                "Is {head} associated with any side effects?"),
               "Side effects of {head} include: {tails}."),
    },
    "dosage": {
        "zh": (("{head}怎么用？", "{head}的用法用量是什么？", "{head}一次用多少、怎么服用？"),
               "{head}的用法用量：{tails}。"),
        "en": (("What is the dosage of {head}?", "How should {head} be taken?",
                "How much {head} should be taken, and how often?"),
               "The dosage of {head} is: {tails}."),
    },
    "indication": {
        "zh": (("{head}能治什么病？", "{head}的适应症有哪些？", "{head}适用于哪些情况？"),
               "{head}的适应症包括：{tails}。"),
        "en": (("What is {head} used for?", "What are the indications for {head}?",
                "Which conditions is {head} indicated for?"), "{head} is indicated for: {tails}."),
    },
    "differential": {
        "zh": (("{head}需要和哪些疾病鉴别？", "{head}的鉴别诊断有哪些？",
                "哪些疾病容易与{head}混淆？"),
               "{head}需要与以下疾病相鉴别：{tails}。"),
        "en": (("What should {head} be distinguished from?",
                "What is the differential diagnosis of {head}?",
                "Which conditions can be confused with {head}?"),
               "The differential diagnosis of {head} includes: {tails}."),
    },
}

# Any relation without its own family; {relation} is the relation as written in the file.
_GENERIC = {
    "zh": (("{head}的{relation}是什么？", "请问{head}的{relation}有哪些？",
            "关于{head}，它的{relation}是什么？"), "{head}的{relation}是：{tails}。"),
    "en": (("What is the {relation} of {head}?", "Tell me the {relation} of {head}.",
            "What {relation} does {head} have?"), "The {relation} of {head}: {tails}."),
}

_RELATION_ALIASES = {
    "symptom": ("症状", "临床表现", "典型症状", "主要症状", "symptoms", "clinical manifestation",
                "clinical manifestations", "sign", "signs"),
    "cause": ("病因", "发病原因", "原因", "causes", "etiology", "aetiology"),
    "treatment": ("治疗", "治疗方法", "治疗方案", "therapy", "treatments"),
    "drug": ("药物治疗", "药物", "常用药物", "用药", "drugs", "medication", "medications",
             "drug therapy"),
    "examination": ("检查", "辅助检查", "实验室检查", "影像学检查", "exam", "test", "tests",
                    "diagnostic test", "examinations"),
    "complication": ("并发症", "complications"),
    "department": ("所属科室", "科室", "就诊科室", "departments"),
    "risk_group": ("易感人群", "高危人群", "多发群体", "susceptible population", "at risk group"),
    "risk_factor": ("高危因素", "危险因素", "risk factors"),
    "transmission": ("传播途径", "传播方式", "route of transmission", "transmission route"),
    "prevention": ("预防", "预防措施", "prevent"),
    "site": ("发病部位", "部位", "病变部位", "body site", "location"),
    "contraindication": ("禁忌", "禁忌症", "禁忌证", "contraindications"),
    "side_effect": ("不良反应", "副作用", "side effects", "adverse reaction", "adverse reactions",
                    "adverse effect", "adverse effects"),
    "dosage": ("用法用量", "用法", "用量", "dose", "usage"),
    "indication": ("适应症", "适应证", "主治", "indications"),
    "differential": ("鉴别诊断", "differential diagnosis"),
}
_RELATION_INDEX = {
    alias: canonical
    for canonical, aliases in _RELATION_ALIASES.items()
    for alias in (canonical, canonical.replace("_", " "), *aliases)
}


def canonical_relation(relation: str) -> str | None:
    """The canonical name (``symptom``, ``side_effect`` ...) of a relation label; None if unknown.

    Matching ignores case, surrounding space and ``_``/``-`` (``Side-Effects`` → ``side_effect``).
    """
    key = " ".join(re.sub(r"[_\-]", " ", relation.strip().lower()).split())
    return _RELATION_INDEX.get(key)


@dataclass
class _Group:
    relation: str  # the label first seen, shown by the generic template
    tails: dict[str, None] = field(default_factory=dict)  # insertion-ordered set


def group_triples(triples: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str], _Group]:
    """Triples grouped by ``(head, canonical relation)`` in first-seen order, tails deduplicated.

    Unknown relations group under their own label. The whole grouping is held in memory: triple
    files are small next to instruction data (CMeKG is ~1M triples, a few hundred MB at most).
    """
    groups: dict[tuple[str, str], _Group] = {}
    for head, relation, tail in triples:
        key = (head, canonical_relation(relation) or relation)
        groups.setdefault(key, _Group(relation)).tails[tail] = None
    return groups


def _triple_lang(lang: str, head: str, relation: str) -> str:
    if lang != "auto":
        return lang
    return "zh" if _CJK.search(head + relation) else "en"


def _sentence(text: str, lang: str) -> str:
    # An English sentence may start with a lower-case head ("diabetes"): capitalise it.
    return text[:1].upper() + text[1:] if lang == "en" else text


def _group_records(head: str, key: str, group: _Group, phrasings: int, seed: int, lang: str):
    """The Q&A records of one (head, relation) group: ``phrasings`` questions, one answer."""
    lang = _triple_lang(lang, head, group.relation)
    questions, answer = (_TEMPLATES.get(key) or _GENERIC)[lang]
    tails = ("、" if lang == "zh" else ", ").join(group.tails)
    values = {"head": head, "relation": group.relation, "tails": tails}
    # Seeded per group, so a group's phrasings do not depend on what else is in the file.
    rng = random.Random(f"{seed}\x1f{head}\x1f{key}\x1f{lang}")
    chosen = rng.sample(questions, min(phrasings, len(questions)))
    reply = _sentence(answer.format(**values), lang)
    for question in chosen:
        yield {
            "messages": [
                {"role": "user", "content": _sentence(question.format(**values), lang)},
                {"role": "assistant", "content": reply},
            ],
            "source": "kg",
            "kg": {"head": head, "relation": key},
        }


def kg_to_qa(triples: Iterable[tuple[str, str, str]], phrasings: int = 3, seed: int = 0,
             lang: str = "auto") -> Iterator[dict]:
    """Yield ``messages`` records, ``phrasings`` per (head, relation), all tails in each answer.

    ``kg`` metadata holds the head and the canonical relation (or the label when unknown).
    ``phrasings`` is capped by the templates a relation has (3-4); the choice is fixed by ``seed``.
    ``lang`` ``auto`` writes Chinese when the head or relation contains CJK characters.
    """
    _check_lang(lang)
    if phrasings < 1:
        raise MedtuneError(f"phrasings must be at least 1, got {phrasings}")
    for (head, key), group in group_triples(triples).items():
        yield from _group_records(head, key, group, phrasings, seed, lang)


# --- passages --------------------------------------------------------------------------------


def _paragraphs(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, stripped lines)`` of each run of non-blank lines."""
    start, block = 0, []
    for n, line in enumerate(lines, 1):
        if line.strip():
            start = start or n
            block.append(line.strip())
        elif block:
            yield start, block
            start, block = 0, []
    if block:
        yield start, block


def _text_passages(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)``: blank-line-separated paragraphs, or each line if none are blank."""
    blocks = list(_paragraphs(text.split("\n")))
    if len(blocks) == 1:  # no blank line anywhere: each line is a passage
        start, block = blocks[0]
        blocks = [(start + i, [line]) for i, line in enumerate(block)]
    for start, block in blocks:
        yield start, f"{path.name}:{start}", "\n".join(block)


def _jsonl_passages(path: Path, text: str, on_skip: OnSkip | None):
    """``(line, id, text)`` per JSONL row with a ``text``; ``id`` defaults to ``file:line``."""
    for line, raw in _nonblank_lines(text):
        try:
            record = _json_object(raw)
            if not isinstance(record.get("text"), str):
                raise _BadRow('field "text" missing' if "text" not in record
                              else 'field "text" must be a string')
            pid = record.get("id")
            yield line, (f"{path.name}:{line}" if pid is None else str(pid)), record["text"].strip()
        except _BadRow as e:
            _report(path, line, str(e), on_skip)


def read_passages(path, min_chars: int = 50,
                  on_skip: OnSkip | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(passage_id, text)`` from a .txt file or JSONL with ``text`` (and optional ``id``).

    Text files: blank-line-separated paragraphs (lines joined with newlines), or one passage per
    line when the file has no blank lines; ids are ``file:line`` of the passage's first line.
    Passages shorter than ``min_chars`` are skipped, reported through ``on_skip`` when given; a bad
    JSONL row raises ``file:line: ...`` or goes to ``on_skip``.
    """
    path = Path(path)
    text = _read_text(path)
    if _is_jsonl(path, text):
        rows = _jsonl_passages(path, text, on_skip)
    else:
        rows = _text_passages(path, text)
    for line, pid, body in rows:
        if len(body) >= min_chars:
            yield pid, body
        elif on_skip is not None:
            on_skip(line, f"passage shorter than {min_chars} characters")


# --- grounding -------------------------------------------------------------------------------

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[0-9a-z]+(?:['’.\-][0-9a-z]+)*")
_STOP_UNITS = frozenset({
    "的", "了", "是", "在", "和", "与", "及", "或", "等", "也", "都", "而", "其", "之",
    "a", "an", "the", "of", "and", "or", "to", "in", "on", "at", "by", "for", "with", "as", "is",
    "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "from",
})


def content_units(text: str) -> list[str]:
    """The units grounding compares: CJK characters one by one, lower-cased Latin words and
    numbers; punctuation and stop words dropped."""
    return [u for u in _UNIT.findall(text.lower()) if u not in _STOP_UNITS]


def support(answer: str, passage_units: set[str]) -> float:
    """The fraction of the answer's content units found in the passage (0.0 for no units)."""
    units = content_units(answer)
    return sum(u in passage_units for u in units) / len(units) if units else 0.0


# --- prompts and replies ---------------------------------------------------------------------

PROMPT_VERSION = 1  # part of the cache key: bump when the prompt text changes
_PROMPTS = {
    "zh": (
        "请阅读<passage>标签中的医学资料，编写{n}个问答对。\n要求：\n"
        "1. 问题是患者或医学生可能会问的自然问题；\n"
        "2. 答案只能依据资料中的内容，不要添加资料以外的信息，尽量沿用资料原文的表述；\n"
        '3. 只输出一个JSON数组，格式为[{{"question": "...", "answer": "..."}}]，'
        "不要输出其他文字。\n\n"
        "<passage>\n{passage}\n</passage>"
    ),
    "en": (
        "Read the medical text in the <passage> tags and write {n} question-answer pairs.\n"
        "Rules:\n1. Questions are natural questions a patient or medical student might ask.\n"
        "2. Answers use only information stated in the passage, preferably in its own words; add "
        "nothing from outside it.\n"
        '3. Output only a JSON array, [{{"question": "...", "answer": "..."}}], and no other text.'
        "\n\n<passage>\n{passage}\n</passage>"
    ),
}
_FENCE = re.compile(r"\A```[a-zA-Z]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)


class UnparsableReply(ValueError):
    """An LLM reply that is not the JSON list of Q&A pairs asked for."""


def parse_qa_pairs(content: str) -> list[tuple[str, str]]:
    """``[(question, answer)]`` from a reply that is a JSON list of {"question", "answer"}
    (a ```json fence is tolerated); raises UnparsableReply naming what is wrong."""
    text = content.strip()
    fenced = _FENCE.match(text)
    text = fenced.group(1).strip() if fenced else text
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnparsableReply(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(items, list):
        raise UnparsableReply(f"expected a JSON list, got {type(items).__name__}")
    pairs = []
    for i, item in enumerate(items, 1):
        for key in ("question", "answer"):
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise UnparsableReply(f'item {i} has no "{key}" string')
        pairs.append((item["question"].strip(), item["answer"].strip()))
    return pairs


# --- HTTP ------------------------------------------------------------------------------------


def urllib_transport(url: str, body: bytes, headers: dict, timeout: float):
    """POST ``body`` with the stdlib; returns ``(status, headers, body)`` for any HTTP reply."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except http.client.HTTPException as e:  # e.g. the server closed the connection mid-reply
        raise ConnectionError(f"{type(e).__name__}: {e}") from e


_MAX_RETRY_AFTER = 300.0  # a server asking for longer is waited on no more than this


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            from datetime import datetime, timezone

            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _error_detail(payload: bytes) -> str:
    """The server's error message (OpenAI ``{"error": {"message"}}``) or the body, shortened."""
    text = payload.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
        text = error.get("message", text) if isinstance(error, dict) else str(error or text)
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(text.split())[:200]


class _Transient(Exception):
    """A failure worth retrying: ``reason`` is the short category counted in the summary."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class _PassageFailed(_Transient):
    """A passage given up on (retries spent, or a request the server will never accept)."""


class _Stopped(Exception):
    """The run was closed early: a worker gives up instead of retrying."""


@dataclass
class _Outcome:
    records: list[dict]
    generated: int = 0
    ungrounded: int = 0
    failure: _PassageFailed | None = None


# --- passage → grounded Q&A ------------------------------------------------------------------


class PassageQAGenerator:
    """Writes Q&A pairs grounded in passages through an OpenAI-compatible ``/chat/completions``.

    Requests run on ``concurrency`` threads; records come out in input order. Connection errors,
    timeouts, HTTP 429/5xx and unparsable replies are retried ``retries`` times with exponential
    backoff and jitter (``Retry-After`` honoured); after that the passage is counted as failed
    with its reason (also listed in :attr:`failures`). HTTP 401/403/404 stop the run with a
    :class:`MedtuneError` since every request would fail; other 4xx fail the passage at once.
    With ``cache_dir`` every parsed reply is stored as it arrives, so a rerun pays only for what
    is missing. A pair is kept when :func:`support` of its answer is at least ``min_support``.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None,
                 questions_per_passage: int = 3, concurrency: int = 4, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 60.0, cache_dir: Path | None = None,
                 temperature: float = 0.7, lang: str = "auto", min_support: float = 0.6,
                 transport: Transport | None = None):
        if not re.match(r"https?://", endpoint):
            raise MedtuneError(f"endpoint {endpoint!r} must start with http:// or https://")
        for name, value, low in (("questions_per_passage", questions_per_passage, 1),
                                 ("concurrency", concurrency, 1), ("retries", retries, 0)):
            if value < low:
                raise MedtuneError(f"{name} must be at least {low}, got {value}")
        if not 0.0 <= min_support <= 1.0:
            raise MedtuneError(f"min_support must be between 0 and 1, got {min_support}")
        self.endpoint, self.model, self.api_key = endpoint.rstrip("/"), model, api_key
        self.questions_per_passage, self.concurrency = questions_per_passage, concurrency
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature, self.lang, self.min_support = temperature, _check_lang(lang), min_support
        self._transport = transport or urllib_transport
        self._url = self.endpoint + ("" if self.endpoint.endswith("/chat/completions")
                                     else "/chat/completions")
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._counts: Counter = Counter()
        self._failed_reasons: Counter = Counter()
        self.failures: list[tuple[str, str]] = []  # (passage_id, "reason: detail")
        self._abort = threading.Event()
        self._fatal: MedtuneError | None = None

    @property
    def summary(self) -> dict:
        """Counts for the last :meth:`run`: passages (finished), requests (HTTP attempts sent),
        cache_hits, failed + failed_reasons, pairs_generated/kept, ungrounded, and tokens:
        prompt/completion tokens paid, saved_tokens served from the cache instead."""
        names = ("passages", "requests", "cache_hits", "failed", "pairs_generated", "pairs_kept",
                 "ungrounded", "prompt_tokens", "completion_tokens", "saved_tokens")
        with self._lock:
            out = {name: self._counts[name] for name in names}
            out["failed_reasons"] = dict(self._failed_reasons)
        return out

    def _count(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    # -- one request --------------------------------------------------------------------------

    def _prompt(self, text: str) -> list[dict]:
        lang = self.lang if self.lang != "auto" else detect_language(text)
        template = _PROMPTS["zh" if lang == "zh" else "en"]
        return [{"role": "user", "content": template.format(n=self.questions_per_passage,
                                                            passage=text)}]

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _reply(self, payload: bytes) -> tuple[str, int]:
        """``(content, tokens)`` of a 200 reply; its token usage is counted as paid."""
        try:
            body = json.loads(payload)
            usage = body.get("usage") or {}
            prompt, completion = (int(usage.get(k) or 0) for k in ("prompt_tokens",
                                                                     "completion_tokens"))
            self._count(prompt_tokens=prompt, completion_tokens=completion)
            content = body["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise _Transient("malformed response", f"{type(e).__name__}: {e}") from None
        if not isinstance(content, str):
            raise _Transient("malformed response", "message content is not a string")
        return content, prompt + completion

    def _refuse(self, status: int, detail: str) -> None:
        """Raise for a 4xx other than 429: stop the run (401/403/404) or fail the passage."""
        if status in (401, 403):
            sent = "" if self.api_key else "; no API key was sent"
            what = "refused the API key" if status == 401 else "refused access"
            self._fatal = MedtuneError(
                f"{self._url}: endpoint {what} (HTTP {status}: {detail}{sent})")
        elif status == 404:
            self._fatal = MedtuneError(
                f"{self._url}: not found (HTTP 404: {detail}); check the model name and that the "
                "endpoint is the API base, e.g. http://127.0.0.1:8000/v1"
            )
        else:
            raise _PassageFailed(f"HTTP {status}", detail)
        self._abort.set()
        raise self._fatal

    def _send(self, messages: list[dict]) -> tuple[str, int]:
        """One POST; returns ``(content, tokens)`` or raises _Transient / _PassageFailed / fatal."""
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": self.temperature}, ensure_ascii=False).encode("utf-8")
        self._count(requests=1)
        try:
            status, headers, payload = self._transport(self._url, body, self._headers(),
                                                       self.timeout)
        except OSError as e:
            timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None),
                                                                  TimeoutError)
            raise _Transient("timeout" if timed_out else "connection error", str(e)) from None
        if 200 <= status < 300:
            return self._reply(payload)
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", _error_detail(payload), _retry_after(headers))
        self._refuse(status, _error_detail(payload))

    def _wait_before_retry(self, attempt: int, retry_after: float | None) -> None:
        # Jitter spreads the retries of concurrent workers that failed together.
        delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
        self._abort.wait(retry_after if retry_after is not None else delay)

    def _request_pairs(self, messages: list[dict], key: str) -> list[tuple[str, str]]:
        """Parsed pairs for ``messages``, retrying transient failures; caches the reply."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._wait_before_retry(attempt, last.retry_after)
            if self._abort.is_set():  # another worker hit a fatal error, or the run was closed
                raise MedtuneError(str(self._fatal)) if self._fatal else _Stopped()
            try:
                content, tokens = self._send(messages)
                pairs = parse_qa_pairs(content)
            except _PassageFailed:
                raise
            except _Transient as e:
                last = e
                continue
            except UnparsableReply as e:
                last = _Transient("unparsable reply", str(e))
                continue
            self._cache_write(key, content, tokens)
            return pairs
        raise _PassageFailed(last.reason, last.detail)

    # -- cache --------------------------------------------------------------------------------

    def _cache_key(self, messages: list[dict]) -> str:
        identity = [PROMPT_VERSION, self.endpoint, self.model, messages, self.temperature,
                    self.questions_per_passage]
        return hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _cache_write(self, key: str, content: str, tokens: int) -> None:
        """Store a parsed reply (and the tokens it cost) atomically: tmp file, then rename."""
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {"model": self.model, "content": content, "tokens": tokens}
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(tmp, self._cache_path(key))

    def _cache_read(self, key: str) -> list[tuple[str, str]] | None:
        """Pairs from a cached reply, or None on a miss (an unreadable entry counts as a miss)."""
        if self.cache_dir is None or not self._cache_path(key).is_file():
            return None
        try:
            entry = json.loads(self._cache_path(key).read_text("utf-8"))
            pairs = parse_qa_pairs(entry["content"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._count(cache_hits=1, saved_tokens=int(entry.get("tokens") or 0))
        return pairs

    # -- one passage --------------------------------------------------------------------------

    def _grounded(self, passage_id: str, text: str, pairs: list[tuple[str, str]]) -> _Outcome:
        """Records for the pairs whose answer the passage supports."""
        passage_units = set(content_units(text))
        records = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "source": "passage", "passage_id": passage_id}
            for q, a in pairs if support(a, passage_units) >= self.min_support
        ]
        return _Outcome(records, generated=len(pairs), ungrounded=len(pairs) - len(records))

    def _process(self, passage_id: str, text: str) -> _Outcome:
        """The outcome of one passage (runs on a worker thread)."""
        messages = self._prompt(text)
        key = self._cache_key(messages)
        pairs = self._cache_read(key)
        if pairs is None:
            try:
                pairs = self._request_pairs(messages, key)
            except _PassageFailed as e:
                return _Outcome([], failure=e)
        return self._grounded(passage_id, text, pairs)

    def _outcomes(self, passages: Iterable[tuple[str, str]]) -> Iterator[tuple[str, _Outcome]]:
        """``(passage_id, outcome)`` in input order, computed ``concurrency`` at a time.

        At most ``2 * concurrency`` passages are in flight, so a huge input is never all queued.
        Closing early cancels queued passages, stops retries and waits for requests in flight,
        whose replies are cached, so a rerun does not pay for them again.
        """
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="medtune-qa")
        pending: deque = deque()
        try:
            for passage_id, text in passages:
                pending.append((passage_id, pool.submit(self._process, passage_id, text)))
                if len(pending) >= 2 * self.concurrency:
                    passage_id, future = pending.popleft()
                    yield passage_id, future.result()
            while pending:
                passage_id, future = pending.popleft()
                yield passage_id, future.result()
        finally:
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _tally(self, passage_id: str, outcome: _Outcome) -> None:
        self._count(passages=1, pairs_generated=outcome.generated, ungrounded=outcome.ungrounded,
                    pairs_kept=len(outcome.records), failed=int(outcome.failure is not None))
        if outcome.failure is not None:
            with self._lock:
                self._failed_reasons[outcome.failure.reason] += 1
                self.failures.append((passage_id, str(outcome.failure)))

    def run(self, passages: Iterable[tuple[str, str]],
            progress: Callable[[str], None] | None = None) -> Iterator[dict]:
        """Yield ``messages`` records (``source`` "passage", ``passage_id``) in input order.

        ``passages`` are ``(passage_id, text)`` pairs (see :func:`read_passages`);
        ``progress(passage_id)`` is called once per finished passage. Counts for this run are in
        :attr:`summary` and failed passages in :attr:`failures` once the iterator is exhausted.
        """
        self._reset()
        for passage_id, outcome in self._outcomes(passages):
            self._tally(passage_id, outcome)
            yield from outcome.records
            if progress is not None:
                progress(passage_id)
