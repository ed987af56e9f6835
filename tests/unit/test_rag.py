"""Retrieval: index build and load (zh + en), manifest checks, ranking on a small corpus, chunking,
prompt augmentation and citations, the CLI's one-line errors, and ``eval rag``'s metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.helpers.cli import assert_one_line_error, medtune

pytest.importorskip("bm25s")

ZH_DOCS = [
    {"id": "dm", "title": "糖尿病", "text": "糖尿病：典型症状为多饮多尿，就诊科室为内分泌科，一线药物为二甲双胍。"},
    {"id": "htn", "title": "高血压", "text": "高血压：典型症状为头晕头痛，就诊科室为心内科，一线药物为氨氯地平。"},
    {"id": "gout", "title": "痛风", "text": "痛风：典型症状为关节红肿热痛，就诊科室为风湿免疫科，一线药物为秋水仙碱。"},
    {"id": "hypo", "title": "甲减", "text": "甲减：典型症状为怕冷乏力，就诊科室为内分泌科，一线药物为左甲状腺素钠。"},
]
EN_MD = """# Asthma

Asthma is a chronic disease of the airways.
Patients have wheezing and shortness of breath.

Inhaled corticosteroids are the first-line controller medication.
"""
EN_TXT = "Gout is an inflammatory arthritis caused by uric acid crystals.\n\nColchicine treats acute gout attacks.\n"


@pytest.fixture
def zh_index(tmp_path):
    from medtune.inference.rag import build_index

    docs = write_jsonl(tmp_path / "kb.jsonl", ZH_DOCS)
    build_index([docs], tmp_path / "zh-index")
    return tmp_path / "zh-index"


@pytest.fixture
def en_index(tmp_path):
    from medtune.inference.rag import build_index

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "asthma.md").write_text(EN_MD, encoding="utf-8")
    (tmp_path / "docs" / "gout.txt").write_text(EN_TXT, encoding="utf-8")
    build_index([tmp_path / "docs"], tmp_path / "en-index", chunk_chars=80)
    return tmp_path / "en-index"


def test_zh_index_round_trip_ranks_the_right_document_first(zh_index):
    from medtune.inference.rag import Retriever

    manifest = json.loads((zh_index / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["language"] == "zh" and manifest["counts"]["documents"] == 4
    assert manifest["counts"]["passages"] == 4 and "jieba" in manifest["analyzer"]["segmenter"]
    assert set(manifest["libraries"]) == {"bm25s", "jieba", "PyStemmer"} and len(manifest["inputs"][0]["sha256"]) == 64
    rag = Retriever.load(zh_index, k=2)
    for question, gold in [("糖尿病吃什么药？", "dm"), ("痛风应该挂哪个科？", "gout"), ("能说说甲减的症状吗？", "hypo"),
                           ("高血压的一线药物", "htn")]:
        hits = rag.search(question)
        assert hits[0].passage.doc_id == gold, (question, [h.passage.doc_id for h in hits])
        assert all(h.score > 0 for h in hits) and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert rag.search("量子力学") == []  # no indexed term: no passage


def test_en_index_round_trip_chunks_with_lines_and_stems(en_index):
    from medtune.inference.rag import Retriever

    rag = Retriever.load(en_index, k=3)
    assert rag.language == "en"
    by_text = {p.text: p for p in rag.passages}
    med = by_text["Inhaled corticosteroids are the first-line controller medication."]
    assert med.source.endswith("asthma.md:6") and med.title == "Asthma" and med.id.endswith("asthma.md#2")
    assert by_text["Colchicine treats acute gout attacks."].source.endswith("gout.txt:3")
    hits = rag.search("which medications treat a gout attack?")  # stemmed: medications/attack match
    assert hits[0].passage.text == "Colchicine treats acute gout attacks."
    assert rag.search("wheezing")[0].passage.title == "Asthma"
    assert rag.search("the of and") == []  # stopwords only: nothing to rank by


def test_long_paragraphs_are_cut_at_sentences_and_at_the_limit():
    from medtune.inference.rag import chunk_document

    text = "第一句很短。" + "长" * 50 + "。最后一句。"
    doc = {"doc_id": "d", "title": "", "source": "f.txt", "line": 1, "text": text, "by_line": True}
    passages = chunk_document(doc, 20)
    assert all(len(p.text) <= 20 for p in passages)
    assert "".join(p.text.replace("\n", "") for p in passages) == text
    assert [p.id for p in passages] == [f"d#{i}" for i in range(len(passages))]


def test_augment_puts_numbered_passages_into_the_last_user_turn(zh_index):
    from medtune.inference.rag import Retriever

    rag = Retriever.load(zh_index, k=2)
    history = [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "你好"},
               {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "痛风的一线药物是什么？"}]
    messages, citations = rag.augment(history)
    assert messages[:3] == history[:3] and history[3]["content"] == "痛风的一线药物是什么？"  # input left alone
    assert [c["n"] for c in citations] == [1, 2] and citations[0]["doc_id"] == "gout"
    assert set(citations[0]) == {"n", "doc_id", "title", "source", "text", "score"}
    turn = messages[3]["content"]
    assert turn.startswith("参考资料：\n[1] 痛风：") and turn.endswith("问题：痛风的一线药物是什么？")
    assert f"[2] {citations[1]['text']}" in turn


def test_a_question_in_the_other_language_gets_no_sources(zh_index, en_index, caplog):
    from medtune.inference.rag import Retriever

    question = [{"role": "user", "content": "What is the first-line drug for gout?"}]
    assert Retriever.load(zh_index).augment(question) == (question, [])
    assert "the question is in en but the index" in caplog.text
    zh_question = [{"role": "user", "content": "痛风的一线药物是什么？"}]
    assert Retriever.load(en_index).augment(zh_question) == (zh_question, [])


def test_the_template_renders_the_augmented_turn(zh_index, tiny_dir):
    from medtune.inference.engines import load_chat_tokenizer
    from medtune.inference.rag import Retriever

    messages, citations = Retriever.load(zh_index, k=1).augment([{"role": "user", "content": "糖尿病吃什么药？"}])
    tok = load_chat_tokenizer(str(tiny_dir), None, "auto", False)
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert citations[0]["text"] in rendered and rendered.index(citations[0]["text"]) < rendered.index("糖尿病吃什么药")


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d), "not found"),
    (lambda d: (d / "manifest.json").unlink(), "not a medtune rag index (no manifest.json)"),
    (lambda d: (d / "manifest.json").write_text("{not json", encoding="utf-8"), "corrupt manifest"),
    (lambda d: _edit_manifest(d, version=99), "index format version 99"),
    (lambda d: _edit_manifest(d, language="fr"), "language: 'fr' is not one of zh, en"),
    (lambda d: _edit_manifest(d, analyzer={**_manifest(d)["analyzer"], "segmenter": "jieba 0.30 search mode"}),
     "built with another tokenizer (segmenter"),
    (lambda d: (d / "passages.jsonl").write_text("{}\n", encoding="utf-8"), "corrupt passage row"),
    (lambda d: shutil.rmtree(d / "bm25"), "corrupt index"),
    (lambda d: (d / "passages.jsonl").write_text((d / "passages.jsonl").read_text(encoding="utf-8").split("\n", 1)[1],
                                                 encoding="utf-8"), "corrupt index (3 passages"),
])
def test_a_damaged_or_foreign_index_is_one_line_error(zh_index, damage, message):
    from medtune.errors import MedtuneError
    from medtune.inference.rag import Retriever

    damage(zh_index)
    with pytest.raises(MedtuneError) as err:
        Retriever.load(zh_index)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_index_built_for_another_language_is_refused(zh_index):
    from medtune.errors import MedtuneError
    from medtune.inference.rag import Retriever

    with pytest.raises(MedtuneError, match=r"manifest.json:language: the index was built for zh, not en"):
        Retriever.load(zh_index, language="en")


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text(encoding="utf-8"))


def _edit_manifest(d: Path, **changes) -> None:
    (d / "manifest.json").write_text(json.dumps({**_manifest(d), **changes}), encoding="utf-8")


def test_bad_documents_are_one_line_errors(tmp_path):
    from medtune.errors import MedtuneError
    from medtune.inference.rag import build_index

    cases = {
        "no_text.jsonl": ('{"id": 1, "text": "ok"}\n{"title": "x"}\n', 'no_text.jsonl:2: field "text" missing'),
        "bad_json.jsonl": ('{"text": "a"}\n{oops\n', "bad_json.jsonl:2: not valid JSON"),
        "bad_id.jsonl": ('{"text": "a", "id": [1]}\n', 'bad_id.jsonl:1: field "id" must be a string'),
        "dup.jsonl": ('{"text": "a", "id": "x"}\n{"text": "b", "id": "x"}\n', "document id 'x' also used"),
        "empty.jsonl": ('{"text": "  "}\n\n', "no document with text (1 empty)"),
        "notes.pdf": ("%PDF", "notes.pdf: not a document file"),
    }
    for name, (body, message) in cases.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
        with pytest.raises(MedtuneError) as err:
            build_index([tmp_path / name], tmp_path / "idx")
        assert message in str(err.value), str(err.value)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(MedtuneError, match="latin1.txt: not UTF-8"):
        build_index([tmp_path / "latin1.txt"], tmp_path / "idx")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(MedtuneError, match="the directory holds no documents"):
        build_index([tmp_path / "emptydir"], tmp_path / "idx")
    with pytest.raises(MedtuneError, match="the pattern matches no files"):
        build_index([str(tmp_path / "*.none")], tmp_path / "idx")
    assert not (tmp_path / "idx").exists()  # nothing half-written


def test_cli_index_refuses_to_replace_an_index_without_overwrite(tmp_path):
    docs = write_jsonl(tmp_path / "kb.jsonl", ZH_DOCS)
    proc = medtune("rag", "index", docs, "-o", tmp_path / "idx")
    assert proc.returncode == 0 and "4 documents from 1 files -> 4 passages (zh" in proc.stdout, proc.stderr
    before = (tmp_path / "idx" / "manifest.json").read_bytes()
    assert_one_line_error(medtune("rag", "index", docs, "-o", tmp_path / "idx"), "already holds files; pass --overwrite")
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == before
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}])
    assert_one_line_error(medtune("rag", "index", empty, "-o", tmp_path / "idx2"), "no document with text")
    assert_one_line_error(medtune("rag", "index", docs, "-o", tmp_path / "idx", "--overwrite", "--chunk-chars", "5"),
                          "--chunk-chars 5: must be at least 20")
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == before
    assert_one_line_error(medtune("chat", "--model", tmp_path, "--rag", tmp_path / "nope"), "--rag")
    assert_one_line_error(medtune("chat", "--model", tmp_path, "--rag-k", "5"), "--rag-k needs --rag INDEX")
    assert_one_line_error(medtune("infer", "--model", tmp_path / "model", "--input", docs, "--output", tmp_path / "o.jsonl",
                                  "--rag", tmp_path / "idx", "--rag-k", "0"), "--rag-k 0: must be at least 1")


# ---------------------------------------------------------------- eval rag


class EchoBot:
    """Answers with the first passage's text when the prompt carries sources, else 'unknown'."""

    def chat_batch(self, conversations, **_):
        out = []
        for messages in conversations:
            turn = messages[-1]["content"]
            out.append(turn.split("[1] ", 1)[1].split("\n", 1)[0] if "[1] " in turn else "unknown")
        return out


def test_eval_rag_metrics_on_a_known_set(zh_index):
    from medtune.evaluation.rag_eval import evaluate_rag
    from medtune.inference.rag import Retriever

    rows = [{"question": "糖尿病吃什么药？", "gold": ["dm"], "answer": "二甲双胍"},
            {"question": "痛风挂什么科？", "gold": ["gout"], "answer": "风湿免疫科"},
            {"question": "甲减的症状", "gold": ["dm"], "answer": "怕冷乏力"},  # gold deliberately wrong: rank 2 or miss
            {"question": "What drug for gout?", "gold": ["gout"], "answer": "秋水仙碱"}]  # other language
    result = evaluate_rag(Retriever.load(zh_index, k=2), rows, bot=EchoBot(), k=2)
    s = result["scores"]
    ranks = [r["rank"] for r in result["rows"]]
    assert ranks[:2] == [1, 1] and ranks[3] is None and ranks[2] in (2, None)
    assert s["hit@1"] == 0.5 and s["hit@2"] == (0.75 if ranks[2] == 2 else 0.5) and s["other_language"] == 1
    assert s["mrr"] == round((1 + 1 + (0.5 if ranks[2] == 2 else 0)) / 4, 4)
    assert s["accuracy_without_retrieval"] == 0.0 and s["accuracy_with_retrieval"] == 0.75
    assert result["rows"][0]["citations"][0] == "dm" and result["rows"][3]["citations"] == []


def test_eval_rag_cli_retrieval_only_and_bad_rows(tmp_path, zh_index):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "糖尿病吃什么药？", "doc_id": "dm"},
                                                   {"question": "痛风挂什么科？", "doc_ids": ["gout", "x"]}])
    proc = medtune("eval", "rag", "--index", zh_index, "--data", questions, "--output", tmp_path / "ev", "--k", "1")
    assert proc.returncode == 0, proc.stderr
    overall = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))["overall"]
    assert overall["hit@1"] == 1.0 and overall["n"] == 2 and "accuracy_with_retrieval" not in overall
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "a", "doc_id": "dm"}, {"question": "b"}])
    assert_one_line_error(medtune("eval", "rag", "--index", zh_index, "--data", bad, "--output", tmp_path / "e2"),
                          'bad.jsonl:2: field "doc_id"')
    assert_one_line_error(medtune("eval", "rag", "--index", tmp_path / "none", "--data", questions,
                                  "--output", tmp_path / "e3"), "not found")


# ---------------------------------------------------------------- the demo's retrieval SFT set


def test_demo_rag_sft_answers_follow_the_passages(tmp_path):
    import re

    from medtune.demo.kb import ANSWERS
    from medtune.demo.rag import write_rag_demo_data

    made = write_rag_demo_data(tmp_path, seed=0, k=2)
    rows = [json.loads(line) for line in Path(made["paths"]["sft"]).read_text(encoding="utf-8").splitlines()]
    unseen = {json.loads(line)["doc_id"] for line in Path(made["paths"]["unseen"]).read_text(encoding="utf-8").splitlines()}
    kb = {r["id"]: r for r in map(json.loads, Path(made["paths"]["kb"]).read_text(encoding="utf-8").splitlines())}
    assert len(unseen) == 10 and 90 * 4 * 3 * 0.95 <= made["counts"]["sft_with_passages"] <= 90 * 4 * 3
    with_context = [r for r in rows if r["messages"][0]["content"].startswith("参考资料：")]
    assert len(with_context) == made["counts"]["sft_with_passages"] and len(rows) > len(with_context)
    counterfactual, names = 0, set()
    for r in with_context:
        question, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        first = question.split("[1] ", 1)[1].split("\n", 1)[0]
        disease = first.split("：", 1)[0]
        assert disease not in unseen
        assert any(re.fullmatch(re.escape(t).replace(re.escape("{v}"), ".+"), answer) for t in ANSWERS.values())
        assert answer in first  # the answer is a span of passage [1]
        if disease in kb:
            assert first == kb[disease]["text"]  # a seen disease's own passage
        else:
            counterfactual += 1  # a made-up disease: its name and values can only be read
            names.add(disease)
    assert counterfactual == len(names) >= 90 * 4 * 2 * 0.95  # each made-up disease asked once
    # the unseen diseases are absent from training entirely: not in the corpus, not in any question,
    # passage or answer (only in the knowledge base, its index and the evaluation sets)
    corpus = [json.loads(line)["text"] for line in Path(made["paths"]["corpus"]).read_text(encoding="utf-8").splitlines()]
    texts = corpus + [m["content"] for r in rows for m in r["messages"]]
    assert len(corpus) == 90 * 13 and not [t for t in texts if any(d in t for d in unseen)]
    assert all(d in " ".join(kb[d]["text"] for d in unseen) for d in unseen)
    assert made["texts"] == texts  # what the tokenizer learns: the training texts, nothing more
    plain = [r for r in rows if not r["messages"][0]["content"].startswith("参考资料：")]
    assert len(plain) == made["counts"]["sft_plain"] == 90 * 4 * 2
    for r in plain:  # relation + value (ANSWERS), the value one of the asked disease's
        question, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        disease = max((d for d in kb if d in question), key=len)
        value = next(m.group(1) for t in ANSWERS.values()
                     if (m := re.fullmatch(re.escape(t).replace(re.escape("{v}"), "(.+)"), answer)))
        assert value in kb[disease]["text"] and disease not in answer


def test_demo_rag_passes_have_their_own_made_up_diseases(tmp_path):
    from medtune.demo.rag import write_rag_demo_data

    made = write_rag_demo_data(tmp_path, seed=0, k=1, passes=2)
    rows = [json.loads(line) for line in Path(made["paths"]["sft"]).read_text(encoding="utf-8").splitlines()]
    kb = {json.loads(line)["id"] for line in Path(made["paths"]["kb"]).read_text(encoding="utf-8").splitlines()}
    firsts = [r["messages"][0]["content"].split("[1] ", 1)[1].split("：", 1)[0]
              for r in rows if r["messages"][0]["content"].startswith("参考资料：")]
    made_up = [d for d in firsts if d not in kb]
    assert len(made_up) == len(set(made_up)) >= 2 * 90 * 4 * 2 * 0.95  # never asked twice, over both passes
    assert made["counts"]["pt_documents"] == 2 * 90 * 13 and made["counts"]["sft_plain"] == 2 * 90 * 4 * 2


def test_demo_rag_reading_copy_and_madeup_sets(tmp_path):
    import random

    from medtune.demo.kb import ANSWERS, RELATIONS, load_kb
    from medtune.demo.rag import copy_documents, counterfactual_kb, passage, write_rag_demo_data

    kb = load_kb()
    real = {rel: {r[rel] for r in kb} for rel in RELATIONS}
    for record in counterfactual_kb(kb, {r["disease"] for r in kb[:90]}, random.Random(3), 50, novel=1.0):
        assert all(record[rel] not in real[rel] for rel in RELATIONS)  # novel: never a real value
        assert all(ANSWERS[rel].format(v=record[rel]) in passage(record) for rel in RELATIONS)
    for doc in copy_documents(["慢阻肺的典型症状是慢性咳嗽气短。", "湿疹患者应避免热水烫洗。"], 20, random.Random(0)):
        first, second = doc.split("\n")
        assert first == second and first
    made = write_rag_demo_data(tmp_path, seed=0, k=1, reading=30)
    corpus = [json.loads(line)["text"] for line in Path(made["paths"]["corpus"]).read_text(encoding="utf-8").splitlines()]
    reading = corpus[90 * 13:]
    assert len(reading) == 30 == made["counts"]["pt_documents"] - 90 * 13
    asked = {json.loads(line)["id"] for line in Path(made["paths"]["cf_kb"]).read_text(encoding="utf-8").splitlines()}
    for doc in reading:  # a made-up disease's passage, then its four answers again in some order
        text, again = doc.split("\n")
        name, facts = text.split("：", 1)
        assert name not in asked and sorted(again.split("。")) == sorted(facts.split("。"))
    # the made-up evaluation set: fresh diseases (not trained), each answer a span of its own passage
    madeup = [json.loads(line) for line in Path(made["paths"]["madeup"]).read_text(encoding="utf-8").splitlines()]
    docs = {json.loads(line)["id"]: json.loads(line)["text"]
            for line in Path(made["paths"]["madeup_kb"]).read_text(encoding="utf-8").splitlines()}
    texts = " ".join(made["texts"])
    assert len(madeup) == 40 and {q["relation"] for q in madeup} == set(RELATIONS)
    for q in madeup:
        assert q["doc_id"] not in texts and q["doc_id"] not in asked and q["answer"] in docs[q["doc_id"]]
        assert q["question"].startswith("能说说" + q["doc_id"])  # the held-out frame
    assert (tmp_path / "madeup-index").is_dir()


def test_a_hybrid_index_embeds_passages_with_a_local_model(tmp_path, tiny_dir):
    import numpy as np

    from medtune.errors import MedtuneError
    from medtune.inference.rag import Retriever, build_index

    docs = write_jsonl(tmp_path / "kb.jsonl", ZH_DOCS)
    manifest = build_index([docs], tmp_path / "idx", embed=tiny_dir)
    spec = manifest["embedding"]
    assert spec["model"] == str(Path(tiny_dir).resolve()) and spec["dim"] == 32 and spec["weight"] == 0.5
    vectors = np.load(tmp_path / "idx" / "embeddings.npy")
    assert vectors.shape == (4, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    rag = Retriever.load(tmp_path / "idx", k=4)
    assert np.allclose(rag.embedder([f"{ZH_DOCS[1]['title']}\n{ZH_DOCS[1]['text']}"])[0], vectors[1], atol=1e-5)
    hits = rag.search("痛风的一线药物")
    assert hits[0].passage.doc_id == "gout" and len(hits) == 4  # dense scores rank every passage
    bm25_only = Retriever.load(tmp_path / "idx", k=4)
    bm25_only.vectors = None
    assert len(bm25_only.search("痛风的一线药物")) <= 4 and bm25_only.search("量子力学") == []
    assert rag.search("量子力学")  # no shared term, still ranked by meaning
    _edit_manifest(tmp_path / "idx", embedding={**spec, "weights_sha256": {"model.safetensors": "0" * 64}})
    with pytest.raises(MedtuneError, match=r"manifest.json:embedding.model: the weights of .* changed"):
        Retriever.load(tmp_path / "idx")
    np.save(tmp_path / "idx" / "embeddings.npy", vectors[:2])
    with pytest.raises(MedtuneError, match=r"corrupt index \(embeddings \(2, 32\)"):
        Retriever.load(tmp_path / "idx")
    with pytest.raises(MedtuneError, match="not a local model directory with safetensors"):
        build_index([docs], tmp_path / "idx2", embed=tmp_path)
