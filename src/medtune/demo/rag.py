"""The demo with retrieval: a tiny model learns to answer from retrieved passages, and then answers
diseases it never trained on (the ``unseen`` ones) from the knowledge-base index.

Example (CPU; a few minutes on 2 cores)::

    PYTHONPATH=src:. python bench/rag_demo.py --out runs/rag-demo
    medtune eval rag --index runs/rag-demo/kb-index --data runs/rag-demo/data/unseen.jsonl \\
        --model runs/rag-demo/model --k 1 --output runs/rag-demo/eval

The unseen diseases are absent from training entirely: their documents are dropped from the corpus
and no question names them, so "without retrieval" cannot be recall and "with retrieval" measures
reading the passage. A tiny model copies from its prompt only when trained to, so the training set
mixes, in one stage like the shipped demo: the corpus of the *seen* diseases, the demo's plain
questions about them (no context), the same questions with the passage the index retrieves for
them, and one question each about *made-up* diseases (a new name from pieces of two real ones,
values real or made up, see :func:`counterfactual_kb`) with its passage from a counterfactual index:
neither the name nor the answer can be recalled, so only reading the context pays — what the
unseen diseases need. Answers are the demo's (relation + value, ``ANSWERS``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from medtune.demo.kb import (
    ANSWERS,
    FRAMES,
    KEYWORDS,
    RELATIONS,
    build_demo_data,
    load_kb,
    render_corpus,
)

# Questions per seen fact: plain (of the demo's 7), with real passages, with counterfactual passages.
# Few plain ones keep training short on 2 CPU cores; the counterfactual ones are what teach copying.
PLAIN_FRAMES, REAL_FRAMES, CF_FRAMES = 2, 1, 2
MADEUP_EVAL = 40  # fresh made-up diseases asked once each: reading measured in training's distribution


def passage(record: dict) -> str:
    """Return a disease's knowledge-base passage: its name, then each relation as the demo's answer
    states it (``X：典型症状是V。就诊科室是V。…``), so a correct reply is a span of the passage.

    The pretraining corpus's summary sentence (``SUMMARY``: 典型症状为…，就诊科室为…) words the
    relations differently from the answers; with it as the passage a model this small must match
    为 with 是 before it can copy, and it did not learn to (BENCHMARKS.md, "rag_demo, round 2")."""
    return record["disease"] + "：" + _statements(record, RELATIONS)


def _statements(record: dict, relations) -> str:
    """Return ``record``'s answers for ``relations``, in that order, as one text."""
    return "".join(ANSWERS[rel].format(v=record[rel]) for rel in relations)


def kb_documents(kb) -> list[dict]:
    """Return one index document per disease: ``{id, title, text}`` with its :func:`passage`."""
    return [{"id": r["disease"], "title": r["disease"], "text": passage(r)} for r in kb]


def _join(a: str, b: str, rng: random.Random) -> str:
    """A head of ``a`` and a tail of ``b``, each cut at a random point (both non-empty)."""
    return a[:rng.randint(1, max(1, len(a) - 1))] + b[rng.randint(1, max(1, len(b) - 1)):]


def _words(values) -> list[str]:
    """Return the distinct jieba words of ``values`` (sorted: the same list on every run)."""
    import jieba

    return sorted({w for v in values for w in jieba.lcut(v) if w.strip()})


def counterfactual_kb(kb, diseases: set, rng: random.Random, n: int, novel: float = 0.5) -> list[dict]:
    """Return ``n`` made-up records: each a new name (a head of one disease's name + a tail of
    another's, never a real or repeated one, never holding another knowledge-base name) and, per
    relation, a value of ``diseases``' or, with probability ``novel``, a made-up one, so a reply
    must copy the passage's tokens, not pick a known value. A made-up value joins 2–3
    words drawn from the jieba words of that relation's values (never a real value): every token is
    one training knows, the sequence is new. Each record is asked about once, so nothing can be
    memorised: only read."""
    real = [r for r in kb if r["disease"] in diseases]
    names, taken = sorted(diseases), {r["disease"] for r in kb}
    others = taken - set(diseases)
    words = {rel: _words(r[rel] for r in real) for rel in RELATIONS}
    known = {rel: {r[rel] for r in kb} for rel in RELATIONS}

    def made_up(rel: str) -> str:
        while (value := "".join(rng.sample(words[rel], rng.choice((2, 3))))) in known[rel]:
            pass
        return value

    records = []
    while len(records) < n:
        name = _join(*rng.sample(names, 2), rng)
        if len(name) < 2 or name in taken or any(o in name for o in others):
            continue
        taken.add(name)
        records.append({"disease": name, **{rel: made_up(rel) if rng.random() < novel else rng.choice(real)[rel]
                                            for rel in RELATIONS}})
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
                answer = ANSWERS[rel].format(d=disease, v=record[rel])
                out.append({"messages": messages + [{"role": "assistant", "content": answer}]})
    rng.shuffle(out)
    return out


def plain_questions(kb, seen: set, per_fact: int, rng: random.Random) -> list[dict]:
    """Return ``per_fact`` plain conversations (no passage) per fact of the ``seen`` diseases, in the
    demo's trained frames and answer format."""
    *trained, _held = FRAMES
    return [{"messages": [{"role": "user", "content": frame.format(d=r["disease"], k=rng.choice(KEYWORDS[rel]))},
                          {"role": "assistant", "content": ANSWERS[rel].format(d=r["disease"], v=r[rel])}]}
            for r in kb if r["disease"] in seen for rel in RELATIONS for frame in rng.sample(trained, per_fact)]


def reading_documents(cf_kb, rng: random.Random) -> list[str]:
    """Return one pretraining text per made-up record: its :func:`passage`, then its four answers
    again in a random order (``X：典型症状是A。…需避免D。 需避免D。典型症状是A。…``). After each
    relation's words the value can only be copied from the passage above it, so every value token
    of the second half trains copying, with the loss on the whole text: far more copy targets per
    step than a question whose loss is on its short answer only."""
    return [passage(r) + "\n" + _statements(r, rng.sample(RELATIONS, len(RELATIONS))) for r in cf_kb]


def copy_documents(texts, n: int, rng: random.Random, chars: float = 0.0) -> list[str]:
    """Return ``n`` synthetic copying texts: 6–16 words drawn at random from the jieba words of
    ``texts``, a newline, the same words again. The second half can only be predicted by copying
    the first, so a short pretraining pass on them teaches the model to copy (induction heads)
    with a copy target in every other token, before it learns to copy from a passage.

    ``chars``: the share of words replaced by 1–2 characters drawn uniformly from the CJK block
    (U+4E00–U+9FA5). Content-free, they give the tokens of characters the training texts never
    use (byte pieces, for this tokenizer) a trained embedding for copying; without them a passage's
    rare character is a token no gradient ever touched."""
    vocab = _words(texts)

    def word() -> str:
        if rng.random() < chars:
            return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 2)))
        return rng.choice(vocab)

    docs = []
    for _ in range(n):
        words = [word() for _ in range(rng.randint(6, 16))]
        docs.append("".join(words) + "\n" + "".join(words))
    return docs


def question_rows(items) -> list[dict]:
    """Return demo evaluation items as ``medtune eval rag`` rows (the gold document is the disease)."""
    return [{"question": it["question"], "answer": it["answer"], "doc_id": it["disease"],
             "relation": it["relation"]} for it in items]


def _write_jsonl(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def write_rag_demo_data(out: Path, seed: int = 0, k: int = 1,
                        frames: tuple = (PLAIN_FRAMES, REAL_FRAMES, CF_FRAMES), passes: int = 1,
                        novel: float = 0.5, reading: int = 0) -> dict:
    """Write the knowledge-base documents, both indexes, the training corpus (seen diseases only),
    the question set with and without passages and the evaluation sets under ``out``; return their
    paths, the training texts (for the tokenizer) and counts. ``frames``: questions per seen fact
    (plain, with real passages, with counterfactual passages). ``passes``: the corpus and the
    questions are written that many times (the questions re-drawn, frames and keywords sampled
    again) and every pass has its own made-up diseases, so training one epoch over them never
    shows a made-up disease twice. ``novel``: the share of made-up values (:func:`counterfactual_kb`).
    ``reading``: made-up records per pass written into the corpus as :func:`reading_documents`
    (their own, never asked about). The unseen diseases appear only in the knowledge base, its
    index and the evaluation sets; ``madeup`` asks about ``MADEUP_EVAL`` fresh made-up diseases
    (``madeup-index``), drawn after training's data, which they leave unchanged."""
    from medtune.inference.rag import Retriever, build_index

    kb, rng = load_kb(), random.Random(seed + 1)
    data = build_demo_data(kb, seed=seed)
    unseen = {it["disease"] for it in data.unseen}
    seen = {r["disease"] for r in kb} - unseen
    asked = len(seen) * len(RELATIONS) * frames[2] * passes
    cf_kb = counterfactual_kb(kb, seen, rng, asked + reading * passes, novel)  # one draw: no name twice
    cf_kb, cf_read = cf_kb[:asked], cf_kb[asked:]
    paths = {"kb": _write_jsonl(out / "data" / "kb.jsonl", kb_documents(kb)),
             "seen_kb": _write_jsonl(out / "data" / "kb-seen.jsonl",
                                     kb_documents([r for r in kb if r["disease"] in seen])),
             "cf_kb": _write_jsonl(out / "data" / "kb-counterfactual.jsonl", kb_documents(cf_kb))}
    build_index([paths["kb"]], out / "kb-index")  # the whole knowledge base: what evaluation retrieves from
    # training's passages come from the seen diseases' index, so with k > 1 no unseen disease's
    # passage comes into training as a second passage either
    build_index([paths["seen_kb"]], out / "train-index")
    build_index([paths["cf_kb"]], out / "cf-index")
    retriever, cf_retriever = Retriever.load(out / "train-index", k=k), Retriever.load(out / "cf-index", k=k)
    per_pass = len(cf_kb) // passes
    rag_sft, plain = [], []
    for p in range(passes):
        rag_sft += rag_sft_examples(kb, seen, retriever, cf_retriever, cf_kb[p * per_pass:(p + 1) * per_pass],
                                    rng, frames[1])
        plain += plain_questions(kb, seen, frames[0], rng)
    sft = plain + rag_sft
    random.Random(seed).shuffle(sft)
    # the seen diseases' documents only: the unseen ones must be absent from training
    corpus = render_corpus([r for r in kb if r["disease"] in seen], random.Random(seed)) * passes
    if reading:
        corpus += reading_documents(cf_read, rng)
    if any(d in t for t in corpus + [m["content"] for c in sft for m in c["messages"]] for d in unseen):
        raise RuntimeError("an unseen disease is named in the training data")  # an invariant, tested
    paths |= {"corpus": _write_jsonl(out / "data" / "corpus.jsonl", ({"text": t} for t in corpus)),
              "sft": _write_jsonl(out / "data" / "sft.jsonl", sft),
              "heldout": _write_jsonl(out / "data" / "heldout.jsonl", question_rows(data.heldout)),
              "unseen": _write_jsonl(out / "data" / "unseen.jsonl", question_rows(data.unseen))}
    # reading in training's own distribution: made-up diseases drawn like training's (never one of
    # them), asked once each in the held-out frame, retrieved from their own index
    names = {r["disease"] for r in cf_kb + cf_read}
    fresh = [r for r in counterfactual_kb(kb, seen, random.Random(seed + 2), 50 * MADEUP_EVAL, novel)
             if r["disease"] not in names][:MADEUP_EVAL]
    paths["madeup_kb"] = _write_jsonl(out / "data" / "kb-madeup.jsonl", kb_documents(fresh))
    build_index([paths["madeup_kb"]], out / "madeup-index")
    rels = [RELATIONS[i % len(RELATIONS)] for i in range(len(fresh))]
    paths["madeup"] = _write_jsonl(out / "data" / "madeup.jsonl", (
        {"question": FRAMES[-1].format(d=r["disease"], k=KEYWORDS[rel][i // len(RELATIONS) % len(KEYWORDS[rel])]),
         "answer": r[rel], "doc_id": r["disease"], "relation": rel} for i, (r, rel) in enumerate(zip(fresh, rels))))
    texts = corpus + [m["content"] for c in sft for m in c["messages"]]
    return {"paths": paths, "corpus": corpus, "texts": texts, "counts": {
        "pt_documents": len(corpus), "sft_plain": len(plain), "sft_with_passages": len(rag_sft),
        "heldout_questions": len(data.heldout), "unseen_questions": len(data.unseen)}}
