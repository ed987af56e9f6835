"""Quality rules of `medtune data clean`: golden cases per rule (zh and en), first-failing-reason
order, record shapes, token lengths, and flag rates on real medical datasets."""

import base64
import collections
import csv
import doctest
import json

import pytest

from medtune.data.clean import quality
from medtune.data.clean.quality import (
    QualityRules,
    check_record,
    check_tokens,
    detect_language,
    is_garbled,
    is_repetitive,
    is_truncated,
    repeat_ratio,
    token_lengths,
)
from medtune.errors import MedtuneError
from tests.conftest import SHARED_DATA


def chat(user: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def test_module_doctests_pass():
    assert doctest.testmod(quality).failed == 0


# --- garbled -------------------------------------------------------------------------------

LAB_TABLE = (
    "| 指标 | 结果 | 参考值 |\n|------|------|--------|\n| WBC | 5.0 | 4-10 |\n"
    "| HGB | 130 g/L | 120-160 |\n| PLT | 210 | 100-300 |\n|------|------|--------|"
)
CODE_ANSWER = (
    "示例：\n```python\nfor dose in doses:\n    print(dose)\nfor dose in doses:\n"
    "    print(dose)\nfor dose in doses:\n    print(dose)\n```\n按剂量打印。"
)
UTF8_AS_GBK = "医生你好，我头疼三天了。".encode().decode("gbk", errors="ignore")


@pytest.mark.parametrize(
    "text",
    [
        "患者主诉头痛\ufffd\ufffd三天。",
        "锟斤拷锟斤拷锟斤拷",
        UTF8_AS_GBK,
        "高血压患者能吃党参吗？".encode().decode("gb18030", errors="replace"),
        "Iâ€™m sorry to hear about your fever.",
        "The cafÃ© serves soup; patients with naÃ¯ve immune systems",
        "Doctor, what tests do I need?Â\xa0",
        "Result: \x00\x01\x02\x03 normal",
        "检查结果\ue001\ue002\ue003\ue004正常",
        "See attachment " + base64.b64encode(bytes(range(256))).decode(),
        "#@*&%$" * 30,
    ],
)
def test_garbled_text_is_flagged(text):
    assert is_garbled(text)


@pytest.mark.parametrize(
    "text",
    [
        "血常规：WBC 5.0×10^9/L，中性粒细胞 70%，BP 120/80mmHg，体温 37.8℃。",
        "注意事项：①注意休息②多喝水③按时服药，剂量 0.5g/（kg·h）。",
        LAB_TABLE,
        "```python\nimport numpy as np\nx = np.zeros((3, 3))  # {}[]()<>=+-*/\n```\n以上是代码。",
        "A naïve patient at the café—the one with a résumé—asked about Crohn’s disease.",
        "Take 500 mg q8h (max 4 g/day); recheck LFTs in 2-4 weeks. ≥ 65 y: 250 mg.",
        "Patient is 5'10\" and 80 kg, BMI 25.5 kg/m², SpO₂ 98%.",
        "医生，我得了恶性乳腺癌中期，方案是做8次化疗，我已经做了四次了。",
        "→",
    ],
)
def test_normal_medical_text_is_not_garbled(text):
    assert not is_garbled(text)


# --- truncated -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "建议您多喝水，注意休息，",
        "常用的治疗方法包括：",
        "可选用阿莫西林、",
        "可以服用布洛芬和",
        "建议检查血常规以及",
        "You should rest, drink fluids, and",
        "The most common cause of this is the",
        "Symptoms include fever, cough, or",
        "We will need to see a",
        "常用药物有：阿莫西林（一种青霉素类抗生素",
        "Try this:\n```python\nprint('dose')",
        'The doctor said "take it twice a day',
        "治疗方法：\n1. 多喝水\n2. 多休息\n3.",
        "Steps:\n1) rest\n2)",
        "建议多休息，按时服药……",
        "The main treatments are...",
    ],
)
def test_cut_answers_are_truncated(text):
    assert is_truncated(text)


@pytest.mark.parametrize(
    "text",
    [
        "是的",
        "Yes",
        "药性温和",
        "病情缓和",
        "You may have hepatitis A",
        "高血压的典型症状是头痛头晕。",
        "可服用布洛芬（饭后服用）",
        "常见症状有发热、咳嗽、乏力等……",
        "Possible causes: infection, allergy, etc...",
        "建议早日就医。……",
        "Patient is 5'10\" tall",
        "治疗方法：\n1. 多喝水\n2. 多休息",
        # Chinese lists end every item with a semicolon, the last one included.
        "注意：1）不能服食辛辣食物；2）忌饮酒；",
        # A bracket whose closer was lost earlier is damage, not a cut.
        "可多食润肠通便的食物(如蜂蜜、香蕉等以保持大便通畅。",
        "",
    ],
)
def test_complete_answers_are_not_truncated(text):
    assert not is_truncated(text)


# --- repetitive ----------------------------------------------------------------------------

LIST_ANSWER = (
    "高血压的治疗包括以下几个方面：\n"
    "1. 生活方式干预：低盐饮食，每日食盐不超过5克，戒烟限酒，规律运动，控制体重。\n"
    "2. 药物治疗：常用药物包括钙通道阻滞剂、ACEI、ARB、利尿剂和β受体阻滞剂，"
    "建议在医生指导下选择合适的药物。\n"
    "3. 定期监测：每天早晚测量血压并记录，如血压波动明显，建议在医生指导下调整剂量。\n"
    "4. 并发症筛查：定期检查肾功能、眼底和心电图，及早发现靶器官损害。"
)
EN_ANSWER = (
    "Yes, there are a few medications that can help with drug withdrawal. Clonidine can help "
    "with symptoms like high blood pressure and anxiety. Methadone can help with opioid "
    "withdrawal. Dicyclomine can help with abdominal cramps and diarrhea. Loperamide can also "
    "help with diarrhea. Chloral hydrate can help with insomnia."
)


def test_repeat_ratio_golden_values():
    # 4 copies of a 7-character sentence (punctuation ignored): the last 21 of 28 are repeats.
    assert repeat_ratio("我建议您多喝水。" * 4) == pytest.approx(21 / 28)
    assert repeat_ratio("the " * 12) == pytest.approx(11 / 12)
    assert repeat_ratio(LIST_ANSWER) == 0.0
    assert repeat_ratio("") == 0.0


def test_repeat_ratio_ignores_punctuation_spacing_and_case():
    loop = "I suggest you drink more water. " * 5
    assert repeat_ratio(loop) == repeat_ratio(loop.upper().replace(".", "!").replace(" ", "  "))
    zh = "建议您多喝水，注意休息。" * 3
    assert repeat_ratio(zh) == repeat_ratio(zh.replace("，", ",").replace("。", " "))


@pytest.mark.parametrize(
    "text",
    [
        "我建议您多喝水。" * 5,
        "the " * 20,
        "I suggest you drink more water and rest. " * 4,
        "Based on your symptoms, it could be a viral infection. " * 3 + "Please see a doctor.",
        # The whole answer pasted twice, as in the Chinese dialogue data.
        "肝硬化对症治疗。有腹水的话补蛋白消腹水，食管静脉曲张少吃干硬的食物以防血管破裂出血。" * 2,
    ],
)
def test_loops_are_repetitive(text):
    assert is_repetitive(text, 0.3)


@pytest.mark.parametrize(
    "text",
    [
        LIST_ANSWER,
        EN_ANSWER,
        "Bruton酪氨酸激酶（BTK）缺陷所致，为Bruton酪氨酸激酶（Btk）基因突变所致",
        "| 药物 | 剂量 |\n| --- | --- |\n| 阿莫西林 | 0.5g |\n| --- | --- |\n| 布洛芬 | 0.3g |",
        CODE_ANSWER,
        "参考：[www.nhc.gov.cn/yzygj/list](http://www.nhc.gov.cn/yzygj/list)",
        "嗯嗯",
    ],
)
def test_normal_answers_are_not_repetitive(text):
    assert not is_repetitive(text, 0.3)


def test_max_ratio_is_the_threshold():
    text = "我建议您多喝水。" * 4  # ratio 0.75
    assert is_repetitive(text, 0.7) and not is_repetitive(text, 0.8)


# --- language ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("患者有COPD和CKD病史，目前使用ACEI。", "zh"),
        ("What is the dose of amoxicillin (阿莫西林) for children with otitis media?", "en"),
        ("WBC 5.0×10^9/L", "en"),
        ("120/80 mmHg", "en"),
        ("120/80", "other"),
        ("Лихорадка", "other"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


# --- whole records -------------------------------------------------------------------------


def test_first_failing_reason_in_order():
    # Fails garbled, truncated, repetitive and (with lang="en") wrong language at once.
    answer = "\ufffd" + "我建议您多喝水。" * 6 + "以及"
    rec = chat("头痛怎么办？", answer)
    rules = QualityRules(lang="en")
    reasons = []
    for switch in ("check_garbled", "check_truncated", "check_repetitive"):
        reasons.append(check_record(rec, rules))
        setattr(rules, switch, False)
    reasons.append(check_record(rec, rules))
    assert reasons == ["garbled", "truncated", "repetitive", "wrong language"]
    rules.lang = "zh"
    assert check_record(rec, rules) is None


def test_length_and_prompt_reasons_come_first():
    long_garbled = chat("", "\ufffd" * 50)
    assert check_record(chat("", " \n"), QualityRules()) == "empty response"
    assert check_record(long_garbled, QualityRules(min_chars=100)) == "too short"
    assert check_record(long_garbled, QualityRules(max_chars=10)) == "too long"
    assert check_record(long_garbled, QualityRules()) == "empty prompt"
    assert check_record(chat("头痛", "\ufffd" * 50), QualityRules()) == "garbled"


def test_prompt_without_visible_text_or_below_min_chars_is_empty():
    assert check_record(chat("\u200b \ufeff\n", "多喝水。"), QualityRules()) == "empty prompt"
    assert (
        check_record(chat("头痛", "多喝水。"), QualityRules(min_prompt_chars=3)) == "empty prompt"
    )
    assert check_record(chat("头痛三天", "多喝水。"), QualityRules(min_prompt_chars=3)) is None
    only_answer = {"messages": [{"role": "assistant", "content": "多喝水。"}]}
    assert check_record(only_answer, QualityRules()) == "empty prompt"


def test_text_records_check_the_document():
    assert check_record({"text": "发热是常见症状。"}, QualityRules()) is None
    assert check_record({"text": "发热是常见症状，"}, QualityRules()) == "truncated"
    assert check_record({"text": "Fever is common."}, QualityRules(lang="zh")) == "wrong language"
    assert check_record({"text": "发热"}, QualityRules(min_chars=3)) == "too short"


def test_choice_records_only_get_question_and_language_checks():
    rec = {
        "question": "高血压的一线用药是？",
        "options": {"A": "\ufffd，", "B": "氨氯地平"},
        "answer": "A",
    }
    assert check_record(rec, QualityRules(min_chars=100)) is None
    assert check_record(rec, QualityRules(lang="en")) == "wrong language"
    assert check_record({**rec, "question": " "}, QualityRules()) == "empty prompt"


def test_preference_and_kto_check_the_answer_the_model_learns():
    prompt = [{"role": "user", "content": "发烧怎么办？"}]
    good = [{"role": "assistant", "content": "多喝水，注意休息。"}]
    looped = [{"role": "assistant", "content": "多喝水，注意休息。" * 6}]
    pref = {"prompt": prompt, "chosen": good, "rejected": looped}
    assert check_record(pref, QualityRules()) is None
    assert (
        check_record({**pref, "chosen": looped, "rejected": good}, QualityRules()) == "repetitive"
    )
    kto = {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": "多喝水，"}],
        "label": True,
    }
    assert check_record(kto, QualityRules()) == "truncated"


def test_prompt_records_have_no_response_to_check():
    rec = {"prompt": [{"role": "user", "content": "发烧怎么办？"}]}
    assert check_record(rec, QualityRules(min_chars=5)) is None
    assert (
        check_record({"prompt": [{"role": "user", "content": ""}]}, QualityRules())
        == "empty prompt"
    )


def test_bad_rules_are_user_errors():
    with pytest.raises(MedtuneError, match="lang 'cn'"):
        QualityRules(lang="cn")
    with pytest.raises(MedtuneError, match="max_repeat_ratio"):
        QualityRules(max_repeat_ratio=30)


# --- tokens --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def word_tokenizer():
    """A whitespace word tokenizer that adds [BOS] as its special token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "fever": 2, "and": 3, "cough": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]")


def test_token_lengths_count_without_special_tokens(word_tokenizer):
    texts = ["fever and cough", "", "fever headache"]
    assert len(word_tokenizer("fever")["input_ids"]) == 2  # the tokenizer does add [BOS]
    assert token_lengths(texts, word_tokenizer) == [3, 0, 2]
    assert token_lengths(texts, word_tokenizer, batch_size=1) == [3, 0, 2]


def test_token_lengths_tokenize_in_batches(word_tokenizer):
    calls = []

    def counting_tokenizer(batch, **kwargs):
        calls.append(len(batch))
        return word_tokenizer(batch, **kwargs)

    assert token_lengths(["fever"] * 5, counting_tokenizer, batch_size=2) == [1] * 5
    assert calls == [2, 2, 1]


def test_check_tokens():
    assert check_tokens(10, 10) is None
    assert check_tokens(11, 10) == "too many tokens"
    assert check_tokens(10**6, None) is None


# --- real data -----------------------------------------------------------------------------


def _chat_turns(user: str, answer: str, history=()) -> dict:
    messages = []
    for past_user, past_answer in history:
        messages += [
            {"role": "user", "content": past_user},
            {"role": "assistant", "content": past_answer},
        ]
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def _alpaca(row: dict) -> dict:
    instruction = row.get("instruction", row.get("instruct", ""))  # CMtMedQA uses both keys
    user = "\n".join(p for p in (instruction, row.get("input") or "") if p)
    return _chat_turns(user, row["output"], row.get("history") or ())


def _sharegpt(row: dict) -> dict:
    roles = {"human": "user", "gpt": "assistant"}
    return {
        "messages": [
            {"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]
        ]
    }


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_real(name: str) -> list[dict]:
    if name == "huatuo":
        return [_alpaca(r) for r in _jsonl(SHARED_DATA / "huatuo/llama_data.json")]
    if name == "chatdoctor":
        return [
            _alpaca(r)
            for r in json.loads((SHARED_DATA / "chatdoctor/chatdoctor5k.json").read_text())
        ]
    if name == "medicalgpt":
        return [
            _sharegpt(r) for r in _jsonl(SHARED_DATA / "medicalgpt/sft/medical_sft_1K_format.jsonl")
        ]
    if name == "dialogue":
        path = SHARED_DATA / "chinese-medical-dialogue-data/internal_medicine_5000-6000.csv"
        with open(path, encoding="gb18030", newline="") as f:
            return [_chat_turns(r["ask"], r["answer"]) for r in csv.DictReader(f)]
    return [
        _alpaca(r) for r in json.loads((SHARED_DATA / "zhongjing/CMtMedQA_test.json").read_text())
    ]


REAL = ["huatuo", "chatdoctor", "medicalgpt", "dialogue", "zhongjing"]
# Known defects of these files, so a rule that silently stops firing fails the test:
# ChatDoctor has "â€™" mojibake, the dialogue CSV answers cut mid-sentence ("，") and answers
# pasted twice, MedicalGPT answers cut at a length limit.
AT_LEAST = {
    ("chatdoctor", "garbled"): 5,
    ("dialogue", "truncated"): 40,
    ("dialogue", "repetitive"): 8,
    ("medicalgpt", "truncated"): 4,
}
AT_MOST = {
    "garbled": 0.005,
    "truncated": 0.02,
    "repetitive": 0.005,
    "empty prompt": 0.001,
    "empty response": 0.001,
}


@pytest.fixture(scope="module")
def real_records() -> dict:
    return {name: _load_real(name) for name in REAL}


@pytest.fixture(scope="module")
def real_reasons(real_records) -> dict:
    """name -> (record count, Counter of check_record reasons under the default rules)."""
    rules = QualityRules()
    return {
        name: (len(recs), collections.Counter(check_record(r, rules) for r in recs))
        for name, recs in real_records.items()
    }


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="real data in /work/shared/data not present")
@pytest.mark.parametrize("name", REAL)
def test_flag_rates_on_real_data_are_plausible(real_reasons, name):
    total, counts = real_reasons[name]
    assert total > 900
    for reason, n in counts.items():
        if reason is not None:
            assert n / total <= AT_MOST.get(reason, 0.0), (name, reason, n, total)
    for (source, reason), n in AT_LEAST.items():
        if source == name:
            assert counts[reason] >= n, (name, reason, counts)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="real data in /work/shared/data not present")
def test_language_of_real_data(real_records):
    from medtune.data.readers.records import full_text

    for name, lang in (("huatuo", "zh"), ("chatdoctor", "en")):
        records = real_records[name]
        share = sum(detect_language(full_text(r)) == lang for r in records) / len(records)
        assert share >= 0.99, (name, share)
        wrong = sum(
            check_record(r, QualityRules(lang=lang, check_garbled=False)) == "wrong language"
            for r in records[:500]
        )
        assert wrong <= 5
