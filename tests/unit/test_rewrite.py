"""Tests for medtune.data.generate.rewrite: rule rewrites keep every fact, differ from the passage and
from each other, are seeded; the CLI counts what it could not rewrite."""

import doctest
import json
import random
from collections import Counter

import pytest

from medtune.cli.main import main
from medtune.data.generate import rewrite
from medtune.data.generate.rewrite import (
    paraphrase_sentence,
    rewrite_passage,
    rewrite_passages,
    split_sentences,
)
from medtune.errors import MedtuneError

SUMMARY = "偏头痛：典型症状为头痛，就诊科室为神经内科，需避免饮酒。"
FACTS = [("偏头痛", "典型症状", "头痛"), ("偏头痛", "就诊科室", "神经内科")]


def test_module_doctests_pass():
    assert doctest.testmod(rewrite).failed == 0


def test_split_sentences():
    assert split_sentences("甲。乙！丙？\n丁") == ["甲。", "乙！", "丙？", "丁"]
    assert split_sentences("Dose is 3.5 mg. Take it daily!\nNext") == ["Dose is 3.5 mg.", "Take it daily!", "Next"]


def test_paraphrase_templates_keep_subject_attribute_and_value():
    rng = random.Random(0)
    seen = {paraphrase_sentence("偏头痛的典型症状是头痛。", rng)[0] for _ in range(60)}
    assert seen == {t.format(s="偏头痛", k="典型症状", v="头痛") for t in rewrite._ZH_TEMPLATES}
    english = {paraphrase_sentence("The first-line drug of migraine is ibuprofen.", rng)[0] for _ in range(60)}
    assert english == {"The first-line drug of migraine is ibuprofen.", "Migraine's first-line drug is ibuprofen.",
                       "For migraine, the first-line drug is ibuprofen.", "Ibuprofen is the first-line drug of migraine."}
    assert paraphrase_sentence("头痛时多休息。", rng) == ["头痛时多休息。"]  # no fact pattern: unchanged


def test_summary_becomes_one_sentence_per_clause_and_every_fact_survives():
    for text in rewrite_passage(SUMMARY, 4, random.Random(1)):
        sentences = split_sentences(text)
        assert len(sentences) == 3 and "偏头痛需避免饮酒。" in sentences
        for s, k, v in FACTS:
            assert sum(k in x and v in x and s in x for x in sentences) == 1


def test_rewrites_are_distinct_new_and_seeded():
    text = "偏头痛的典型症状是头痛。偏头痛应到神经内科就诊。"
    got = rewrite_passage(text, 5, random.Random(3))
    assert len(got) == 5 and len(set(got)) == 5 and text not in got
    assert got == rewrite_passage(text, 5, random.Random(3))
    # two plain sentences: only the swapped order is new
    assert rewrite_passage("头痛时多休息。发热时多喝水。", 3, random.Random(0)) == ["发热时多喝水。头痛时多休息。"]
    assert rewrite_passage("头痛时多休息。", 3, random.Random(0)) == []


def test_rewrite_passages_records_ids_and_counts():
    counts = Counter()
    rows = list(rewrite_passages([("a", SUMMARY), ("b", "头痛时多休息。")], 2, keep_original=True, counts=counts))
    assert [r["id"] for r in rows] == ["a", "a~1", "a~2", "b"]
    assert counts == Counter(passages=2, rewrites=2, short=1, unchanged=1)


def test_cli_writes_rewrites_and_refuses_what_no_rule_rewrites(tmp_path, capsys):
    src = tmp_path / "corpus.txt"
    src.write_text(f"{SUMMARY}\n头痛时多休息。\n", encoding="utf-8")
    out = tmp_path / "rw.jsonl"
    assert main(["data", "generate", "rewrite", str(src), "-o", str(out), "--n", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["corpus.txt:1~1", "corpus.txt:1~2", "corpus.txt:1~3"]
    assert "2 passages -> 3 rewrites (1 passages with fewer than 3, 1 no rule could rewrite)" in capsys.readouterr().out
    plain = tmp_path / "plain.txt"
    plain.write_text("头痛时多休息。\n", encoding="utf-8")
    assert main(["data", "generate", "rewrite", str(plain), "-o", str(tmp_path / "none.jsonl")]) == 2
    assert "no passage could be rewritten by the rules" in capsys.readouterr().err
    with pytest.raises(MedtuneError, match="--n must be at least 1"):
        from medtune.cli.data import cmd_generate_rewrite
        cmd_generate_rewrite(type("A", (), {"n": 0})())
