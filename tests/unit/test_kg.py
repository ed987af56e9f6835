"""Tests for medtune.data.generate.kg: KG triples → Q&A (golden values, seed determinism, aliases) and the
triple reader's strict / lenient error handling."""

import doctest

import pytest

from medtune.data.generate import kg
from medtune.data.generate.kg import canonical_relation, kg_to_qa, read_triples
from medtune.errors import MedtuneError
from tests.conftest import write_jsonl


def test_module_doctests_pass():
    assert doctest.testmod(kg).failed == 0


# --- knowledge graph -------------------------------------------------------------------------

KG_CSV = """实体1,关系,实体2
糖尿病,症状,多饮
糖尿病,临床表现,多尿
糖尿病,症状,多饮
糖尿病,所属科室,内分泌科
高血压,并发症,脑卒中
高血压,遗传方式,多基因遗传
"""


def qa(rec):
    return rec["kg"]["relation"], rec["messages"][0]["content"], rec["messages"][1]["content"]


GOLDEN_ZH_SEED0 = [
    ("symptom", "糖尿病有哪些症状？", "糖尿病的常见症状包括：多饮、多尿。"),
    ("symptom", "糖尿病的常见症状是什么？", "糖尿病的常见症状包括：多饮、多尿。"),
    ("department", "糖尿病应该去哪个科室就诊？", "糖尿病一般到内分泌科就诊。"),
    ("department", "糖尿病挂什么科？", "糖尿病一般到内分泌科就诊。"),
    ("complication", "高血压有哪些并发症？", "高血压的并发症包括：脑卒中。"),
    ("complication", "高血压会引起什么并发症？", "高血压的并发症包括：脑卒中。"),
    ("遗传方式", "高血压的遗传方式是什么？", "高血压的遗传方式是：多基因遗传。"),
    ("遗传方式", "关于高血压，它的遗传方式是什么？", "高血压的遗传方式是：多基因遗传。"),
]


@pytest.fixture
def kg_csv(tmp_path):
    path = tmp_path / "kg.csv"
    path.write_text(KG_CSV, encoding="utf-8")
    return path


def test_kg_golden_zh(kg_csv):
    records = list(kg_to_qa(read_triples(kg_csv), phrasings=2, seed=0))
    assert [qa(r) for r in records] == GOLDEN_ZH_SEED0
    assert records[0]["source"] == "kg"
    assert records[0]["kg"] == {"head": "糖尿病", "relation": "symptom"}
    assert [m["role"] for m in records[0]["messages"]] == ["user", "assistant"]


def test_kg_golden_en_from_jsonl_aliases(tmp_path):
    path = write_jsonl(tmp_path / "kg.jsonl", [
        {"subject": "aspirin", "predicate": "side effect", "object": "gastric bleeding"},
        {"subject": "aspirin", "predicate": "Side_Effects", "object": "tinnitus"},
        {"subject": "aspirin", "predicate": "side-effect", "object": "gastric bleeding"},
        {"subject": "aspirin", "predicate": "indication", "object": "fever"},
        {"subject": "aspirin", "predicate": "mechanism", "object": "COX inhibition"},
    ])
    records = list(kg_to_qa(read_triples(path), phrasings=1, seed=0))
    assert [qa(r) for r in records] == [
        ("side_effect", "Is aspirin associated with any side effects?",
         "Side effects of aspirin include: gastric bleeding, tinnitus."),
        ("indication", "What are the indications for aspirin?", "Aspirin is indicated for: fever."),
        ("mechanism", "Tell me the mechanism of aspirin.",
         "The mechanism of aspirin: COX inhibition."),
    ]


def test_kg_phrasings_count_distinct_and_capped(kg_csv):
    triples = list(read_triples(kg_csv))
    for phrasings, per_group in ((1, 1), (3, 3), (10, 3)):  # department/complication have 3
        records = [r for r in kg_to_qa(triples, phrasings=phrasings)
                   if r["kg"]["relation"] == "department"]
        assert len(records) == per_group
        assert len({r["messages"][0]["content"] for r in records}) == per_group
        assert {r["messages"][1]["content"] for r in records} == {"糖尿病一般到内分泌科就诊。"}
    symptom = [r for r in kg_to_qa(triples, phrasings=10) if r["kg"]["relation"] == "symptom"]
    assert len(symptom) == 4
    with pytest.raises(MedtuneError, match="phrasings"):
        list(kg_to_qa(triples, phrasings=0))


def test_kg_deterministic_by_seed_and_independent_of_other_groups(kg_csv):
    triples = list(read_triples(kg_csv))
    first = list(kg_to_qa(triples, phrasings=2, seed=7))
    assert first == list(kg_to_qa(triples, phrasings=2, seed=7))
    seeds = {tuple(qa(r) for r in kg_to_qa(triples, phrasings=1, seed=s)) for s in range(6)}
    assert len(seeds) > 1  # the seed changes which phrasings are picked
    # Adding another head must not change what an existing group gets.
    more = list(kg_to_qa([("肺炎", "病因", "细菌感染"), *triples], phrasings=2, seed=7))
    assert [r for r in more if r["kg"]["head"] != "肺炎"] == first


def test_kg_lang_forced_and_aliases():
    records = list(kg_to_qa([("糖尿病", "临床表现", "多尿"), ("糖尿病", "症状", "口渴")],
                            phrasings=1, lang="en"))
    assert len(records) == 1
    assert records[0]["messages"][1]["content"] == "Common symptoms of 糖尿病 include: 多尿, 口渴."
    assert canonical_relation("不良反应") == canonical_relation("side effects") == "side_effect"
    assert canonical_relation(" Differential-Diagnosis ") == "differential"
    assert canonical_relation("遗传方式") is None
    with pytest.raises(MedtuneError, match="lang"):
        list(kg_to_qa([("a", "b", "c")], lang="fr"))


def test_read_triples_tsv_and_bom(tmp_path):
    path = tmp_path / "kg.tsv"
    path.write_text("\ufeffSubject\tPredicate\tObject\n感冒\t科室\t呼吸内科\n", encoding="utf-8")
    assert list(read_triples(path)) == [("感冒", "科室", "呼吸内科")]


def test_read_triples_bad_rows_strict_and_lenient(tmp_path):
    path = tmp_path / "kg.csv"
    path.write_text("head,relation,tail\n感冒,症状,发热\n\n感冒,症状,\n感冒,症状\n感冒,病因,病毒\n",
                    encoding="utf-8")
    with pytest.raises(MedtuneError) as info:
        list(read_triples(path))
    assert str(info.value) == f'{path}:4: field "tail" empty'
    skipped = []
    triples = list(read_triples(path, on_skip=lambda line, reason: skipped.append((line, reason))))
    assert triples == [("感冒", "症状", "发热"), ("感冒", "病因", "病毒")]
    assert skipped == [(4, 'field "tail" empty'), (5, 'field "tail" missing')]


def test_read_triples_jsonl_errors_and_bad_header(tmp_path):
    path = tmp_path / "kg.jsonl"
    path.write_text('{"head": "a", "relation": "b", "tail": "c"}\n{"head": "a", "relation": "b"}\n'
                    "{broken\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match=rf'^{path}:2: field "tail" missing$'):
        list(read_triples(path))
    skipped = []
    assert list(read_triples(path, on_skip=lambda *a: skipped.append(a))) == [("a", "b", "c")]
    assert [line for line, _ in skipped] == [2, 3] and "invalid JSON" in skipped[1][1]
    bad = tmp_path / "bad.csv"
    bad.write_text("disease,rel,value\nx,y,z\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match=r':1: no "head" column \(header has: disease, rel,'):
        list(read_triples(bad))
