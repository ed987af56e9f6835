"""Tests for ``medtune data generate verifiable``: multiple-choice records in the CMExam, MedQA and
CMB layouts become open problems whose reference answer_match checks; questions that cannot stand
without their options are skipped and counted by reason, bad records named by file:line."""

import doctest
import json
from pathlib import Path

import pytest

from medtune.cli.main import main
from medtune.data.generate import verifiable
from medtune.data.generate.verifiable import SKIPS, to_verifiable
from medtune.data.readers.stream import ReadOptions, iter_records
from medtune.recipes.rewards import answer_match
from medtune.recipes.rl import split_record
from tests.helpers.cli import assert_one_line_error, medtune

CMEXAM = [  # options as "(A) text" lines, answer "(B)"
    {"question": "偏头痛患者应到哪个科室就诊？", "options": "(A) 骨科\n(B) 神经内科\n(C) 眼科", "answer": "(B)"},
    {"question": "下列哪项是糖尿病的典型症状？", "options": "(A) 多饮\n(B) 脱发", "answer": "(A)"},
    {"question": "糖尿病的一线用药是什么？", "options": "(A) 二甲双胍\n(B) 青霉素", "answer": "(E)"},  # not an option
    {"question": "高血压的危险因素有哪些？", "options": "(A) 高盐饮食\n(B) 肥胖\n(C) 以上都是", "answer": "(C)"},
]
MEDQA = [  # options an object, answer_idx the letter
    {"question": "A 30-year-old woman has a throbbing unilateral headache. What is the first-line drug?",
     "options": {"A": "Ibuprofen", "B": "Penicillin"}, "answer_idx": "A", "answer": "Ibuprofen"},
    {"question": "Each of these causes fever except:", "options": {"A": "Influenza", "B": "Sunlight"},
     "answer_idx": "B"},
]
CMB = [  # option an object, answer letters
    {"question": "偏头痛发作时应避免什么？", "option": {"A": "饮酒", "B": "休息"}, "answer": "A", "exam_type": "医师考试"},
    {"question": "头痛的常见原因？", "option": {"A": "头痛", "B": "偏头痛"}, "answer": "A"},
    {"question": "哪些是解热镇痛药？", "option": {"A": "布洛芬", "B": "对乙酰氨基酚", "C": "青霉素"}, "answer": "AB"},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_module_doctests_pass():
    assert doctest.testmod(verifiable).failed == 0


@pytest.mark.parametrize("question,options,answer,reason", [
    ("5岁以下儿童发热首选哪种药？", {"A": "对乙酰氨基酚", "B": "阿司匹林"}, "A", None),  # 以下 of an age
    ("患者男，45岁，最可能的诊断是", {"A": "偏头痛", "B": "骨折"}, "A", None),
    ("以下说法正确的是", {"A": "甲", "B": "乙"}, "A", "needs_options"),
    ("Which of the following is a symptom?", {"A": "thirst", "B": "hair loss"}, "A", "needs_options"),
    ("偏头痛的诱因不包括", {"A": "饮酒", "B": "规律作息"}, "B", "odd_one_out"),
    ("Each is true except", {"A": "x", "B": "y"}, "A", "odd_one_out"),
    ("糖尿病的症状", {"A": "多饮", "B": "多尿", "C": "A和B"}, "C", "names_options"),
    ("糖尿病的症状", {"A": "多饮", "B": "多饮。"}, "A", "same_text"),
    ("头痛的原因", {"A": "头痛", "B": "偏头痛"}, "A", "inside_other"),
    ("哪些药", {"A": "布洛芬", "B": "扑热息痛"}, "AB", "multi"),
    ("治疗方案", {"A": "长" * 41, "B": "短"}, "A", "long"),
])
def test_skip_rules(question, options, answer, reason):
    problem, why = to_verifiable({"question": question, "options": options, "answer": answer})
    assert why == (SKIPS[reason] if reason else None)
    assert (problem is None) == (reason is not None)


def test_context_and_instruction_go_before_and_after_the_question():
    problem, _ = to_verifiable({"question": "首选药？", "options": {"A": "布洛芬", "B": "青霉素"}, "answer": "A",
                                "context": "患者头痛三天。", "id": 7, "subject": "神经内科"}, instruction="请直接给出答案。")
    assert problem["messages"][0]["content"] == "患者头痛三天。\n\n首选药？\n请直接给出答案。"
    assert problem["meta"] == {"answer_letter": "A", "options": {"A": "布洛芬", "B": "青霉素"}, "id": 7,
                               "subject": "神经内科"}


def test_cli_three_layouts_counts_every_skip_and_grpo_reads_the_references(tmp_path, capsys):
    files = [write(tmp_path / "cmexam.jsonl", CMEXAM), write(tmp_path / "medqa.jsonl", MEDQA),
             write(tmp_path / "cmb.jsonl", CMB)]
    out, report = tmp_path / "verifiable.jsonl", tmp_path / "report.json"
    assert main(["data", "generate", "verifiable", *map(str, files), "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "written         1  skipped       3" in printed.replace(",", "")
    assert "cmexam.jsonl:3: field \"answer\" letter \"E\" is not among the options A, B" in printed
    assert f"{SKIPS['needs_options']}" in printed and "cmexam.jsonl:2" in printed
    assert "total: read 9, written 3, skipped 6" in printed
    tallies = {Path(f["path"]).name: f for f in json.loads(report.read_text(encoding="utf-8"))["files"]}
    assert tallies["cmexam.jsonl"]["skipped"] == {'field "answer" letter "E" is not among the options A, B': 1,
                                                  SKIPS["needs_options"]: 1, SKIPS["names_options"]: 1}
    assert tallies["medqa.jsonl"]["skipped"] == {SKIPS["odd_one_out"]: 1}
    assert tallies["cmb.jsonl"]["skipped"] == {SKIPS["inside_other"]: 1, SKIPS["multi"]: 1}

    records = list(iter_records(out, ReadOptions()))  # what stage grpo reads: messages records
    pairs = [split_record(r) for r in records]
    assert [ref for _, ref in pairs] == ["神经内科", "Ibuprofen", "饮酒"]
    assert [p[-1]["content"] for p, _ in pairs][0] == "偏头痛患者应到哪个科室就诊？"
    replies = ["<think>偏头痛属于神经系统疾病</think>应到神经内科就诊。", "Penicillin.", "应避免饮酒。"]
    assert answer_match([p for p, _ in pairs], replies, reference=[r for _, r in pairs]) == [1.0, 0.0, 1.0]
    raw = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["meta"]["answer_letter"] for r in raw] == ["B", "A", "A"]
    assert raw[1]["meta"]["options"] == {"A": "Ibuprofen", "B": "Penicillin"}


def test_strict_stops_at_the_first_unusable_question(tmp_path):
    src = write(tmp_path / "cmexam.jsonl", CMEXAM)
    proc = medtune("data", "generate", "verifiable", src, "-o", tmp_path / "o.jsonl", "--strict")
    assert_one_line_error(proc, f"{src}:2: {SKIPS['needs_options']}")
    bad = write(tmp_path / "bad.jsonl", CMEXAM[2:3])
    proc = medtune("data", "generate", "verifiable", bad, "-o", tmp_path / "o.jsonl", "--strict")
    assert_one_line_error(proc, f'{bad}:1: field "answer" letter "E" is not among the options A, B')


def test_nothing_usable_keeps_the_previous_output_and_other_shapes_are_refused(tmp_path, capsys):
    src = write(tmp_path / "all_bad.jsonl", [CMEXAM[1], MEDQA[1]])
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    assert main(["data", "generate", "verifiable", str(src), "-o", str(out)]) == 2
    assert "no open problems written (every question was skipped); the previous" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "previous\n"
    chat = write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]}])
    assert main(["data", "generate", "verifiable", str(chat), "-o", str(out), "--format", "auto"]) == 2
    assert "holds messages records, not multiple-choice questions" in capsys.readouterr().err
