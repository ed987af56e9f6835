"""Knowledge-graph triples → question/answer ``messages`` records, from relation templates.

>>> triples = [("糖尿病", "症状", "多饮"), ("糖尿病", "临床表现", "多尿")]
>>> rec = next(kg_to_qa(triples, phrasings=1))
>>> rec["messages"][1]["content"]
'糖尿病的常见症状包括：多饮、多尿。'
>>> canonical_relation("Side-Effects")
'side_effect'

HuaTuo built its instructions from CMeKG this way: :func:`read_triples` reads a CSV/TSV/JSONL
triple file, :func:`group_triples` gathers the tails of each (head, relation) and :func:`kg_to_qa`
writes relation-specific questions with all tails in one answer (``medtune data generate kg``).

The input-file helpers here (encoding detection, JSONL sniffing, ``file:line`` errors or
``on_skip``) are shared with :mod:`medtune.data.generate.passage_qa`.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data.readers.stream import check_readable, detect_encoding
from medtune.errors import MedtuneError, where
from medtune.files import JsonLineError, numbered_lines, parse_json_object

__all__ = [
    "canonical_relation",
    "group_triples",
    "kg_to_qa",
    "read_triples",
]

# --- input files (shared with passage_qa) ----------------------------------------------------

OnSkip = Callable[[int, str], None]
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


class _BadRow(Exception):
    """A row problem; the message is the reason without ``file:line``."""


def _json_object(line: str) -> dict:
    try:
        return parse_json_object(line)
    except JsonLineError as e:
        raise _BadRow(e.reason) from None


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
    first = next((line for _, line in numbered_lines(text)), "")
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
    rows = numbered_lines(text) if _is_jsonl(path, text) else _table_rows(path, text)
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
