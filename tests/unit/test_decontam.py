"""Benchmark-leak detection with unit n-grams (medtune.data.clean.decontam)."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from medtune.data.clean.decontam import NgramIndex, build_index, eval_texts, units
from medtune.data.readers.records import full_text

ZH_QUESTION = (
    "患者，男，62岁。突发胸骨后压榨性疼痛2小时，伴大汗，心电图示V1～V4导联ST段抬高，最可能的诊断是"
)
EN_QUESTION = (
    "A 45-year-old man presents with crushing chest pain radiating to the left arm for two hours. "
    "Which of the following is the most likely diagnosis?"
)
BENCHMARK = [
    {
        "question": ZH_QUESTION,
        "options": {"A": "急性前壁心肌梗死", "B": "主动脉夹层"},
        "answer": "A",
    },
    {
        "question": EN_QUESTION,
        "options": {"A": "Myocardial infarction", "B": "GERD"},
        "answer": "A",
    },
]


def _index(**kwargs) -> NgramIndex:
    return build_index((t for rec in BENCHMARK for t in eval_texts(rec)), **kwargs)


def _chat(user: str, answer: str = "好的。") -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def test_units_golden():
    assert units("COVID-19 患者，Ｔ细胞 ≥3.5%") == [
        "covid",
        "19",
        "患",
        "者",
        "t",
        "细",
        "胞",
        "3",
        "5",
    ]
    assert units("  Hello, WORLD!! ") == ["hello", "world"]
    assert units("β受体阻滞剂_ＡＢＣ") == ["β", "受", "体", "阻", "滞", "剂", "abc"]
    assert units("すし 김치 ①") == ["す", "し", "김", "치", "1"]
    assert units("，。！？ —— ") == []


def test_verbatim_questions_are_flagged():
    index = _index()
    zh_leak = _chat(f"请回答下面的题目：{ZH_QUESTION}？", "答案是A，急性前壁心肌梗死。")
    en_leak = _chat("Exam practice. " + EN_QUESTION, "Myocardial infarction.")
    assert index.matches(full_text(zh_leak)) > 0
    assert index.matches(full_text(en_leak)) > 0
    clean = _chat("高血压患者日常饮食需要注意什么？", "低盐低脂饮食，规律服药。")
    assert index.matches(full_text(clean)) == 0 and index.first_match(full_text(clean)) is None


def test_punctuation_whitespace_and_case_changes_still_match():
    index = _index()
    zh_variant = ZH_QUESTION.replace("，", ", ").replace("。", ".").replace("～", "-") + "（ ）"
    en_variant = EN_QUESTION.upper().replace("-", " ").replace(". ", ";\n  ")
    assert index.matches(zh_variant) == len(units(ZH_QUESTION)) - 13 + 1
    assert index.matches(en_variant) == len(units(EN_QUESTION)) - 13 + 1


def test_shared_medical_phrases_below_n_units_do_not_match():
    index = _index()
    # 12-unit fragments of the question, but never 13 consecutive units
    zh_text = "胸骨后压榨性疼痛2小时，需警惕。心电图示V1～V4导联ST段抬高者应溶栓。"
    en_text = "Crushing chest pain radiating to the left arm for two hours is typical of angina."
    assert index.matches(zh_text) == 0
    assert index.matches(en_text) == 0
    assert index.matches(zh_text + en_text) == 0


def test_short_question_matches_only_verbatim_inside_longer_text():
    index = build_index(["高血压的首选药物是什么？", "头痛怎么办？"])  # 11 units, 5 units
    assert index.skipped == 1 and len(index) == 1
    assert index.matches("考试题：高血压的首选药物是什么（单选）") == 1
    assert index.first_match("考试题：高血压的首选 药物是什么（单选）") == "高血压的首选 药物是什么"
    assert index.matches("高血压的首选治疗是生活方式干预，药物是什么时候开始？") == 0
    assert index.matches("头痛怎么办？多休息。") == 0  # under min_units: not indexed


def test_first_match_returns_whole_leaked_stretch():
    index = _index()
    text = "Intro text here. " + EN_QUESTION + " Answer: MI."
    span = index.first_match(text)
    assert span == EN_QUESTION.lower().rstrip("?")
    zh_span = index.first_match("前言。" + ZH_QUESTION + "？A")
    assert zh_span == unicodedata.normalize("NFKC", ZH_QUESTION).lower()


def test_index_size_and_n():
    index = NgramIndex(n=13)
    index.add(ZH_QUESTION)
    grams = len(units(ZH_QUESTION)) - 13 + 1
    assert len(index) == grams
    index.add(ZH_QUESTION.replace("，", " "))  # same units: no new keys
    assert len(index) == grams
    small = build_index([ZH_QUESTION], n=5, min_units=5)
    assert small.matches("胸骨后压榨性疼痛") == 4 and _index().matches("胸骨后压榨性疼痛") == 0
    with pytest.raises(ValueError):
        NgramIndex(n=5, min_units=8)


def test_eval_texts_per_shape():
    long_option = "患者应立即行冠状动脉造影并在九十分钟内完成直接经皮冠状动脉介入治疗"
    choice = {
        "context": "病例：患者男性，既往高血压病史。",
        "question": "下列处理正确的是",
        "options": {"A": "阿司匹林", "B": long_option},
        "answer": "B",
    }
    assert eval_texts(choice) == [
        "病例：患者男性，既往高血压病史。",
        "下列处理正确的是",
        long_option,
    ]
    messages = {
        "messages": [
            {"role": "system", "content": "你是一名医生。"},
            {"role": "user", "content": "问题一"},
            {"role": "assistant", "content": "回答"},
            {"role": "user", "content": "问题二"},
        ]
    }
    assert eval_texts(messages) == ["问题一", "问题二"]
    prompt = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "问"}]}
    assert eval_texts(prompt) == ["问"]
    assert eval_texts({"text": "全文", "source": "x"}) == ["全文"]
    assert eval_texts({"text": ""}) == []


def test_matches_many_equals_matches_and_never_spans_two_texts():
    index = _index()
    texts = [
        "无关的文本。" * 3,
        "前言" + ZH_QUESTION,
        "患者，男，62岁。突发",  # 7 + 8 units: they only leak when read as one text
        "胸骨后压榨性疼痛",
        "",
        EN_QUESTION.lower(),
    ]
    counts = index.matches_many(texts)
    assert counts.tolist() == [index.matches(t) for t in texts]
    assert counts.tolist()[2:5] == [0, 0, 0] and counts[1] > 0 and counts[5] > 0
    assert index.matches(texts[2] + texts[3]) == 3
    many = [
        f"第{i}条：" + (ZH_QUESTION if i % 97 == 0 else "普通病历记录。" * 20) for i in range(3000)
    ]
    assert np.flatnonzero(index.matches_many(many)).tolist() == list(range(0, 3000, 97))


def test_adding_after_queries_updates_the_index():
    index = NgramIndex()
    assert index.matches(ZH_QUESTION) == 0 and index.matches_many([]).tolist() == []
    index.add(ZH_QUESTION)
    assert index.matches(ZH_QUESTION) == len(units(ZH_QUESTION)) - 12
    index.add_many([EN_QUESTION, "头痛"])
    assert index.matches(EN_QUESTION) > 0 and index.skipped == 1
