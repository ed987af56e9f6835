"""``medtune.evaluation.choice`` without a model: prompt format, answer extraction, metrics,
grouping, reading benchmark files (synthetic ones written here; the shared data when present)."""

from __future__ import annotations

import json

import pytest

from medtune.errors import MedtuneError
from medtune.evaluation.choice import (
    ChoiceItem,
    ShotPicker,
    candidates,
    default_dev,
    extract_answer,
    load_items,
    macro_f1,
    prompt_messages,
    question_text,
    summarize,
)
from tests.conftest import SHARED_DATA, write_jsonl

ZH = ChoiceItem("q1", "cmexam", "高血压的首选药物是", {"A": "二甲双胍", "B": "氨氯地平", "C": "阿司匹林"}, "B")
EN_MULTI = ChoiceItem("q2", "medqa", "Which are beta blockers?",
                      {"A": "Metoprolol", "B": "Amlodipine", "C": "Atenolol", "D": "Losartan"}, "AC")
PUBMED = ChoiceItem("123", "pubmedqa", "Does X cause Y?", {"A": "yes", "B": "no", "C": "maybe"}, "A",
                    context="We studied X.\nY followed.")
OPTS = {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}
YNM = {"A": "Yes.", "B": "No.", "C": "Maybe."}


# ---------------------------------------------------------------------------------------------
# prompt format (golden)


def test_question_text_zh_single_golden():
    assert question_text(ZH) == ("以下是一道单项选择题，请直接给出正确答案的选项字母。\n\n"
                                 "高血压的首选药物是\nA. 二甲双胍\nB. 氨氯地平\nC. 阿司匹林")


def test_question_text_en_multi_golden():
    assert question_text(EN_MULTI) == (
        "The following is a multiple-choice question with more than one correct answer. "
        "Answer with all the correct option letters only, e.g. AC.\n\n"
        "Which are beta blockers?\nA. Metoprolol\nB. Amlodipine\nC. Atenolol\nD. Losartan")


def test_question_text_with_context_golden():
    assert question_text(PUBMED) == (
        "The following is a multiple-choice question with one correct answer. "
        "Answer with the option letter only.\n\nContext: We studied X.\nY followed.\n\n"
        "Does X cause Y?\nA. yes\nB. no\nC. maybe")


def test_shots_are_earlier_turns_and_render_in_the_chat_template():
    from medtune.data.tokenize.templates import render, template_source

    messages = prompt_messages(ZH, [EN_MULTI])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "AC"
    text = render(template_source("chatml"), messages, add_generation_prompt=True)
    assert text == (f"<|im_start|>user\n{question_text(EN_MULTI)}<|im_end|>\n<|im_start|>assistant\nAC"
                    f"<|im_end|>\n<|im_start|>user\n{question_text(ZH)}<|im_end|>\n<|im_start|>assistant\n")


def test_shot_picker_prefers_the_same_group_and_never_the_question_itself():
    dev = [ChoiceItem(str(i), g, f"q{i}", OPTS, "A") for i, g in enumerate("xyxyx")]
    picker = ShotPicker(dev + [ChoiceItem("self", "y", "mine", OPTS, "A")])
    item = ChoiceItem("t", "y", "mine", OPTS, "B")
    assert [s.id for s in picker.pick(item, 3)] == ["1", "3", "0"]
    assert picker.pick(item, 0) == []


def test_candidates_single_letters_and_multi_letter_sets():
    assert candidates(ZH) == ["A", "B", "C"]
    sets = candidates(EN_MULTI)
    assert len(sets) == 11 and sets[:3] == ["AB", "AC", "AD"] and sets[-1] == "ABCD"
    assert all(len(s) >= 2 and s == "".join(sorted(s)) for s in sets)


# ---------------------------------------------------------------------------------------------
# answer extraction (CMB / Apollo rules)


@pytest.mark.parametrize("text, multi, want", [
    ("答案是B。", False, "B"),                        # CMB
    ("根据病史分析，正确选项为：C", False, "C"),         # CMB, 正确选项
    ("答案应该是D，因为A不对", False, "D"),              # CMB stops at the first 。/.
    ("The answer is (C).", False, "C"),             # English counterpart
    ("Answer: E", False, "E"),
    ("(B) is right\n(A) is wrong", False, "B"),     # Apollo: brackets on the first line
    ("（D）咽鼓管宽、短、直", False, "D"),                # full-width brackets
    ("\n\nA\n", False, "A"),                        # first non-empty line, loose letter
    ("A or B? B.", False, "B"),                     # most frequent letter
    ("我认为\n选择 C 比较合适", False, "C"),             # CMB fallback: letters anywhere
    ("答案是BCD。", True, "BCD"),                     # multi-answer: letter sets
    ("答案：D、B", True, "BD"),                       # sorted
    ("The answer is A and C.", True, "AC"),
    ("(C)(A)", True, "AC"),
    ("答案是ABD。", False, "A"),                      # single-answer: the first of a tie
])
def test_extract_answer(text, multi, want):
    assert extract_answer(text, OPTS, multi) == want


@pytest.mark.parametrize("text, want", [("Yes.", "A"), ("no", "B"), ("Maybe", "C"), ("(B)", "B")])
def test_extract_yes_no_maybe_by_option_text(text, want):
    assert extract_answer(text, YNM, False) == want


@pytest.mark.parametrize("text", ["", "我不知道", "I cannot tell.", "CAT scan", "F"])
def test_unextractable_is_none(text):
    assert extract_answer(text, {"A": "x", "B": "y", "C": "z", "D": "w"}, False) is None


# ---------------------------------------------------------------------------------------------
# metrics


def test_macro_f1_golden():
    # yes: tp1 fp0 fn1 -> 2/3; no: tp1 fp1 fn0 -> 2/3; maybe: tp0 fn1 -> 0
    assert macro_f1(["yes", "yes", "no", "maybe"], ["yes", "no", "no", None]) == pytest.approx(4 / 9)
    assert macro_f1(["yes", "no"], ["yes", "no"]) == 1.0


def test_macro_f1_matches_scikit_learn():
    f1_score = pytest.importorskip("sklearn.metrics").f1_score
    gold = ["yes", "no", "maybe", "yes", "no", "yes", "maybe"]
    pred = ["yes", "yes", "maybe", "no", "no", "maybe", "yes"]
    assert macro_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="macro"))
    assert macro_f1(gold, pred) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)  # yes, no, maybe


def _row(group, answer, prediction, options=OPTS):
    return {"group": group, "answer": answer, "prediction": prediction, "options": options,
            "correct": prediction == answer,
            "yes_no_maybe": {v.strip(".").lower() for v in options.values()} == {"yes", "no", "maybe"}}


def test_summarize_groups_add_up_and_pubmedqa_gets_macro_f1():
    rows = [_row("cmexam", "A", "A"), _row("cmexam", "BC", "BC"), _row("cmexam", "D", "E"),
            _row("cmb", "A", "B"), _row("pubmedqa", "A", "A", YNM), _row("pubmedqa", "B", "A", YNM)]
    overall, groups = summarize(rows)
    assert list(groups) == ["cmb", "cmexam", "pubmedqa"]
    assert sum(g["n"] for g in groups.values()) == overall["n"] == 6
    assert groups["cmexam"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert overall["accuracy"] == pytest.approx(3 / 6) and "macro_f1" not in overall
    assert groups["pubmedqa"]["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_no_answer_is_wrong_and_counted():
    rows = [_row("g", "A", ""), _row("g", "B", "B"), _row("h", "C", "")]
    overall, groups = summarize(rows, "generate")
    assert overall == {"accuracy": pytest.approx(1 / 3), "no_answer": 2, "n": 3}
    assert groups["g"]["no_answer"] == 1 and groups["h"] == {"accuracy": 0.0, "no_answer": 1, "n": 1}


# ---------------------------------------------------------------------------------------------
# reading benchmark files


APOLLO = [{"question": "高血压的首选药物是", "options": "(A) 二甲双胍.\n(B) 氨氯地平.", "answer": "(B)",
           "source": "cmb-single"},
          {"question": "属于β受体阻滞剂的是", "options": "(A) 美托洛尔.\n(B) 氨氯地平.\n(C) 阿替洛尔.",
           "answer": "(AC)", "source": "cmexam"}]


def test_groups_come_from_source_subject_or_file(tmp_path):
    apollo = tmp_path / "apollo.json"
    apollo.write_text(json.dumps(APOLLO, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "cmmlu").mkdir()
    csv = tmp_path / "cmmlu" / "anatomy.csv"
    csv.write_text(",Question,A,B,C,D,Answer\n0,壁胸膜的分部不包括,肋胸膜,肺胸膜,膈胸膜,胸膜顶,B\n",
                   encoding="utf-8")
    (tmp_path / "medmcqa").mkdir()
    mcqa = write_jsonl(tmp_path / "medmcqa" / "test.jsonl", [
        {"realidx": 7, "question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}])
    items, skipped, _ = load_items([apollo, csv, mcqa])
    assert [(i.group, i.answer) for i in items] == [("cmb-single", "B"), ("cmexam", "AC"),
                                                    ("anatomy", "B"), ("medmcqa", "A")]
    assert items[3].id == "7" and items[0].id == "apollo:0" and not skipped
    assert [i.id for i in load_items([apollo, csv, mcqa], limit=2)[0]] == ["apollo:0", "apollo:1"]


def test_bad_answer_letter_is_a_counted_skip_with_file_line(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "Q1", "options": {"A": "x", "B": "y"}, "answer": "A"},
        {"question": "Q2", "options": {"A": "x", "B": "y"}, "answer": "E"}])
    items, skipped, examples = load_items([path])
    assert len(items) == 1 and sum(skipped.values()) == 1
    assert examples[0].startswith(f"{path}:2: ") and '"E"' in examples[0]


def test_unknown_schema_and_wrong_shape_are_one_line_errors(tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(MedtuneError, match="cannot detect the data format"):
        load_items([odd])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "hi", "output": "yo"}])
    with pytest.raises(MedtuneError, match="not multiple-choice"):
        load_items([sft])


def test_answer_key_restricts_ids_and_supplies_gold(tmp_path):
    pqal = {str(pmid): {"QUESTION": f"Q{pmid}?", "CONTEXTS": ["c"], "final_decision": "yes"}
            for pmid in (11, 12, 13)}
    data = tmp_path / "ori_pqal.json"
    data.write_text(json.dumps(pqal), encoding="utf-8")
    key = tmp_path / "test_ground_truth.json"
    key.write_text(json.dumps({"12": "no", "13": "yes", "99": "maybe"}), encoding="utf-8")
    items, skipped, _ = load_items([data, key])
    assert [(i.id, i.answer, i.group) for i in items] == [("12", "B", "pubmedqa"), ("13", "A", "pubmedqa")]
    assert skipped == {"answer-key id not in --data": 1}
    assert items[0].yes_no_maybe and items[0].context == "c"


def test_default_dev_is_the_sibling_split(tmp_path):
    for sub in ("test", "dev"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "zh.json").write_text("[]")
    (tmp_path / "medqa").mkdir()
    (tmp_path / "medqa" / "test.jsonl").write_text("")
    assert default_dev([tmp_path / "test" / "zh.json"]) == [tmp_path / "dev" / "zh.json"]
    assert default_dev([tmp_path / "medqa" / "test.jsonl"]) == []


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_shared_benchmarks_read_with_their_groups():
    items, skipped, _ = load_items([SHARED_DATA / "apollo/test/zh.json"])
    groups = {i.group for i in items}
    assert len(items) == 8759 and not skipped
    assert groups == {"medqa-mcmle", "cmb-single", "cmexam", "cmmlu-medical"}
    assert sum(i.multi for i in items) == 62  # all cmexam (SOURCES.md says 42)
    items, _, _ = load_items([SHARED_DATA / "pubmedqa/ori_pqal.json",
                              SHARED_DATA / "pubmedqa/test_ground_truth.json"])
    assert len(items) == 500 and all(i.yes_no_maybe for i in items)
