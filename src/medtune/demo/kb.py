"""The demo's synthetic medical knowledge base, rendered into a PT corpus and phrased Q&A.

Each disease has four relations (symptom, department, drug, contraindication). Every fact is
stated in the pretraining corpus in several phrasings. SFT asks about the facts of the *trained*
diseases with the trained question phrasings; evaluation asks every fact with a question phrasing
that training never used (``heldout``), and separately the facts of diseases that SFT never asked
about at all (known only from pretraining).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources

RELATIONS = ("symptom", "department", "drug", "contraindication")

# Pretraining statements: several phrasings per relation, so facts are not tied to one wording.
STATEMENTS = {
    "symptom": ["{d}的典型症状是{v}。", "患{d}的人常出现{v}。", "{v}是{d}的常见表现。"],
    "department": ["{d}应到{v}就诊。", "{d}归{v}诊治。", "得了{d}要挂{v}。"],
    "drug": ["{d}的一线用药是{v}。", "治疗{d}首选{v}。", "{v}是治疗{d}的常用药。"],
    "contraindication": ["{d}患者应避免{v}。", "{d}患者忌{v}。", "患有{d}时不宜{v}。"],
}
SUMMARY = "{disease}：典型症状为{symptom}，就诊科室为{department}，一线药物为{drug}，需避免{contraindication}。"

# Questions: the last phrasing of each relation is held out of SFT and used only to evaluate.
QUESTIONS = {
    "symptom": ["{d}有哪些典型症状？", "{d}的常见症状是什么？", "请问得了{d}会出现什么症状？",
                "{d}一般会有哪些表现？", "{d}通常有什么症状？"],
    "department": ["{d}应该挂哪个科？", "请问{d}去哪个科室看？", "得了{d}要看什么科？",
                   "{d}属于哪个科室？", "{d}需要看哪个科？"],
    "drug": ["{d}的一线用药是什么？", "治疗{d}首选什么药？", "请问{d}吃什么药？",
             "{d}常用哪种药物？", "{d}用什么药治疗？"],
    "contraindication": ["{d}患者应避免什么？", "{d}有什么禁忌？", "请问得了{d}不宜做什么？",
                         "{d}患者要注意避免哪些事？", "{d}要避免什么？"],
}
ANSWERS = {
    "symptom": "{d}的典型症状是{v}。",
    "department": "{d}应到{v}就诊。",
    "drug": "{d}的一线用药是{v}。",
    "contraindication": "{d}患者应避免{v}。",
}


@dataclass
class Fact:
    disease: str
    relation: str
    value: str


@dataclass
class DemoData:
    corpus: list[str]  # pretraining documents
    sft: list[dict]  # {"messages": [...]} training conversations
    heldout: list[dict]  # {"question", "answer", "relation", "disease"}: held-out phrasing, trained diseases
    unseen: list[dict]  # same, for diseases SFT never asked about


def load_kb() -> list[dict]:
    """Return the bundled knowledge base (a list of disease records)."""
    text = resources.files("medtune.assets.demo").joinpath("kb.json").read_text(encoding="utf-8")
    return json.loads(text)


def facts_of(kb) -> list[Fact]:
    """Return every (disease, relation, value) fact of ``kb``."""
    return [Fact(r["disease"], rel, r[rel]) for r in kb for rel in RELATIONS]


def render_corpus(kb, rng: random.Random) -> list[str]:
    """Return pretraining documents: each fact in every phrasing, plus one summary per disease."""
    docs = [SUMMARY.format(**r) for r in kb]
    for fact in facts_of(kb):
        docs += [s.format(d=fact.disease, v=fact.value) for s in STATEMENTS[fact.relation]]
    rng.shuffle(docs)
    return docs


def _qa(fact: Fact, question: str) -> dict:
    return {"question": question.format(d=fact.disease), "answer": fact.value,
            "relation": fact.relation, "disease": fact.disease}


def build_demo_data(kb=None, unseen_fraction: float = 0.1, seed: int = 0) -> DemoData:
    """Return the demo corpus, SFT conversations and the two held-out evaluation sets."""
    kb = kb if kb is not None else load_kb()
    rng = random.Random(seed)
    diseases = [r["disease"] for r in kb]
    unseen = set(rng.sample(diseases, int(len(diseases) * unseen_fraction)))
    sft, heldout, never = [], [], []
    for fact in facts_of(kb):
        *trained, held = QUESTIONS[fact.relation]
        target = never if fact.disease in unseen else heldout
        target.append(_qa(fact, held))
        if fact.disease in unseen:
            continue
        answer = ANSWERS[fact.relation].format(d=fact.disease, v=fact.value)
        for q in trained:
            sft.append({"messages": [{"role": "user", "content": q.format(d=fact.disease)},
                                     {"role": "assistant", "content": answer}]})
    rng.shuffle(sft)
    return DemoData(render_corpus(kb, rng), sft, heldout, never)
