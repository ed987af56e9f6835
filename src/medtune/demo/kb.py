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

# Questions are a sentence frame + a relation keyword. Frames are shared by all relations, so
# the keyword is the only cue to which fact is asked; the last frame is held out of SFT entirely.
FRAMES = ["{d}的{k}是什么？", "{d}有什么{k}？", "请问{d}的{k}？", "得了{d}，{k}是什么？",
          "医生，{d}的{k}有哪些？", "我想了解一下{d}的{k}。", "关于{d}，{k}是什么？",
          "能说说{d}的{k}吗？"]
# The RL stage's frame: neither trained nor the evaluation's held-out one. Its questions on the SFT
# diseases that the SFT model misses are what GRPO trains on (answer_match against the value).
RL_FRAME = "麻烦告诉我{d}的{k}。"
FRAMES_PER_FACT = 7  # SFT asks each fact in this many of the trained frames (sampled)
KEYWORDS = {
    "symptom": ["典型症状", "常见症状", "症状"],
    "department": ["就诊科室", "挂号科室", "科室"],
    "drug": ["一线用药", "首选药物", "常用药"],
    "contraindication": ["禁忌", "需要避免的事", "忌讳"],
}
# The answer states the relation and the value, not the disease's name: a reply that restates the
# name ("X的典型症状是V") must first generate X, and a model this small learns to output the 90 names
# SFT answers about rather than to copy one from the question, so a disease known only from the
# pretraining text got another disease's name and facts (17.5% right; BENCHMARKS.md, "demo knowledge
# injection"). Each relation's answer opens with its own token, so the first token picks the relation.
ANSWERS = {
    "symptom": "典型症状是{v}。",
    "department": "就诊科室是{v}。",
    "drug": "一线用药是{v}。",
    "contraindication": "需避免{v}。",
}
# The fact cloze: each relation's first pretraining phrasing up to the value, as plain text to continue.
CLOZE = {rel: phrasings[0].split("{v}")[0] for rel, phrasings in STATEMENTS.items()}


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
    cloze: list[dict]  # {"question": statement prefix, "answer"}: every fact as text to continue
    rl_pool: list[dict] = None  # same, in RL_FRAME, for the SFT diseases: the RL stage's question pool


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


def _question(frame: str, fact: Fact, rng: random.Random) -> str:
    return frame.format(d=fact.disease, k=rng.choice(KEYWORDS[fact.relation]))


def _qa(fact: Fact, question: str) -> dict:
    return {"question": question, "answer": fact.value, "relation": fact.relation, "disease": fact.disease}


def build_demo_data(kb=None, unseen_fraction: float = 0.1, seed: int = 0) -> DemoData:
    """Return the demo corpus, SFT conversations and the two held-out evaluation sets."""
    kb = kb if kb is not None else load_kb()
    rng = random.Random(seed)
    diseases = [r["disease"] for r in kb]
    unseen = set(rng.sample(diseases, int(len(diseases) * unseen_fraction)))
    sft, heldout, never, pool = [], [], [], []
    for fact in facts_of(kb):
        *trained, held = FRAMES
        target = never if fact.disease in unseen else heldout
        target.append(_qa(fact, _question(held, fact, rng)))
        if fact.disease in unseen:
            continue
        answer = ANSWERS[fact.relation].format(d=fact.disease, v=fact.value)
        pool.append(_qa(fact, _question(RL_FRAME, fact, random.Random(f"{seed}:{fact.disease}:{fact.relation}"))))
        for frame in rng.sample(trained, FRAMES_PER_FACT):
            sft.append({"messages": [{"role": "user", "content": _question(frame, fact, rng)},
                                     {"role": "assistant", "content": answer}]})
    rng.shuffle(sft)
    cloze = [_qa(f, CLOZE[f.relation].format(d=f.disease)) for f in facts_of(kb)]
    return DemoData(render_corpus(kb, rng), sft, heldout, never, cloze, pool)
