"""The demo with retrieval: a tiny model learns to answer from retrieved passages, and then answers
the diseases SFT never asked about (the ``unseen`` ones) from the knowledge-base index.

Example (CPU; PT ~16 min, each SFT round ~20 min on 2 busy cores)::

    PYTHONPATH=src:. python bench/rag_demo.py --out runs/rag-demo
    medtune eval rag --index runs/rag-demo/kb-index --data runs/rag-demo/data/unseen.jsonl \\
        --model runs/rag-demo/sft --output runs/rag-demo/eval

A tiny model copies from its prompt only when trained to. The SFT set therefore mixes three parts:
the demo's plain questions about the *seen* diseases (no context), the same questions with the
passage the index retrieves for them, and one question each about *made-up* diseases (a new name
from two halves of real ones, values drawn at random from the seen diseases') with its passage
from a counterfactual index: neither the name nor the answer can be recalled, and no made-up
disease is asked twice, so only reading the context pays — what the unseen diseases need.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from medtune.demo.kb import ANSWERS, FRAMES, KEYWORDS, RELATIONS, SUMMARY, build_demo_data, load_kb

# Questions per fact: plain (of the demo's 7), with real passages, with counterfactual passages.
# Few plain ones keep SFT short on 2 CPU cores; the counterfactual ones are what teach copying.
PLAIN_FRAMES, REAL_FRAMES, CF_FRAMES = 1, 1, 2


def kb_documents(kb) -> list[dict]:
    """Return one index document per disease: ``{id, title, text}`` with its summary sentence."""
    return [{"id": r["disease"], "title": r["disease"], "text": SUMMARY.format(**r)} for r in kb]


def counterfactual_kb(kb, diseases: set, rng: random.Random, n: int) -> list[dict]:
    """Return ``n`` made-up records: each a new name (the first half of one disease's name + the
    second half of another's, never a real or repeated one) and, per relation, a value drawn from
    ``diseases``' values. Each is asked about once, so nothing can be memorised: only read."""
    real = [r for r in kb if r["disease"] in diseases]
    names, taken = sorted(diseases), {r["disease"] for r in kb}
    records = []
    while len(records) < n:
        a, b = rng.sample(names, 2)
        name = a[:max(1, len(a) // 2)] + b[len(b) // 2:]
        if name in taken:
            continue
        taken.add(name)
        records.append({"disease": name, **{rel: rng.choice(real)[rel] for rel in RELATIONS}})
    return records


def rag_sft_examples(kb, seen: set, retriever, cf_retriever, cf_kb, rng: random.Random,
                     real_frames: int = REAL_FRAMES) -> list[dict]:
    """Return SFT conversations whose user turn carries retrieved passages (``Retriever.augment``):
    ``real_frames`` questions per seen fact with the real passages, and one question per made-up
    record of ``cf_kb`` (relations in turn) with its passages; only questions whose first passage
    is their disease's (the answer follows passage [1])."""
    *trained, _held = FRAMES
    asks = [(retriever, r, rel, real_frames) for r in kb if r["disease"] in seen for rel in RELATIONS]
    asks += [(cf_retriever, r, RELATIONS[i % len(RELATIONS)], 1) for i, r in enumerate(cf_kb)]
    out = []
    for source, record, rel, n in asks:
        disease = record["disease"]
        for frame in rng.sample(trained, n):
            question = frame.format(d=disease, k=rng.choice(KEYWORDS[rel]))
            messages, citations = source.augment([{"role": "user", "content": question}])
            if citations and citations[0]["doc_id"] == disease:
                answer = ANSWERS[rel].format(v=record[rel])
                out.append({"messages": messages + [{"role": "assistant", "content": answer}]})
    rng.shuffle(out)
    return out


def _plain_subset(sft: list[dict], per_fact: int, rng: random.Random) -> list[dict]:
    """Return ``per_fact`` of the demo's plain SFT conversations per fact (its answer names the fact)."""
    by_fact: dict = {}
    for conv in sft:
        by_fact.setdefault(conv["messages"][-1]["content"], []).append(conv)
    return [c for convs in by_fact.values() for c in rng.sample(convs, min(per_fact, len(convs)))]


def question_rows(items) -> list[dict]:
    """Return demo evaluation items as ``medtune eval rag`` rows (the gold document is the disease)."""
    return [{"question": it["question"], "answer": it["answer"], "doc_id": it["disease"],
             "relation": it["relation"]} for it in items]


def _write_jsonl(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def write_rag_demo_data(out: Path, seed: int = 0, k: int = 3, frames: tuple = (PLAIN_FRAMES, REAL_FRAMES, CF_FRAMES)) -> dict:
    """Write the knowledge-base documents, both indexes, the mixed SFT set and the question sets
    under ``out``; return their paths and counts. ``frames``: questions per seen fact (plain, with
    real passages, with counterfactual passages)."""
    from medtune.inference.rag import Retriever, build_index

    kb, rng = load_kb(), random.Random(seed + 1)
    data = build_demo_data(kb, seed=seed)
    unseen = {it["disease"] for it in data.unseen}
    seen = {r["disease"] for r in kb} - unseen
    cf_kb = counterfactual_kb(kb, seen, rng, len(seen) * len(RELATIONS) * frames[2])
    paths = {"kb": _write_jsonl(out / "data" / "kb.jsonl", kb_documents(kb)),
             "cf_kb": _write_jsonl(out / "data" / "kb-counterfactual.jsonl", kb_documents(cf_kb))}
    build_index([paths["kb"]], out / "kb-index")
    build_index([paths["cf_kb"]], out / "cf-index")
    retriever, cf_retriever = Retriever.load(out / "kb-index", k=k), Retriever.load(out / "cf-index", k=k)
    rag_sft = rag_sft_examples(kb, seen, retriever, cf_retriever, cf_kb, rng, frames[1])
    plain = _plain_subset(data.sft, frames[0], rng)
    sft = plain + rag_sft
    random.Random(seed).shuffle(sft)
    paths |= {"corpus": _write_jsonl(out / "data" / "corpus.jsonl", ({"text": t} for t in data.corpus)),
              "sft": _write_jsonl(out / "data" / "sft.jsonl", sft),
              "heldout": _write_jsonl(out / "data" / "heldout.jsonl", question_rows(data.heldout)),
              "unseen": _write_jsonl(out / "data" / "unseen.jsonl", question_rows(data.unseen))}
    return {"paths": paths, "corpus": data.corpus, "counts": {
        "pt_documents": len(data.corpus), "sft_plain": len(plain), "sft_with_passages": len(rag_sft),
        "heldout_questions": len(data.heldout), "unseen_questions": len(data.unseen)}}
