"""``medtune eval choice`` as a user runs it, on a tiny model: synthetic benchmarks written here,
the shared benchmark files when ../shared/data exists, and bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SHARED_DATA, write_jsonl
from tests.helpers.cli import assert_one_line_error, medtune

pytestmark = pytest.mark.slow
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")

BENCH = [
    {"question": "高血压的首选药物是", "options": "(A) 二甲双胍.\n(B) 氨氯地平.\n(C) 阿司匹林.", "answer": "(B)",
     "source": "cmb-single"},
    {"question": "属于β受体阻滞剂的是", "options": "(A) 美托洛尔.\n(B) 氨氯地平.\n(C) 阿替洛尔.\n(D) 氯沙坦.",
     "answer": "(AC)", "source": "cmexam"},
    {"question": "感冒应到哪个科室就诊", "options": "(A) 呼吸内科.\n(B) 骨科.\n(C) 眼科.\n(D) 皮肤科.",
     "answer": "(A)", "source": "cmexam"},
    {"question": "Antidote for paracetamol overdose?", "options": "(A) Naloxone.\n(B) N-acetylcysteine.",
     "answer": "(B)", "source": "medqa-usmle"},
    {"question": "Does exercise lower blood pressure?", "context": "A trial of 200 adults.",
     "options": "(A) Yes.\n(B) No.\n(C) Maybe.", "answer": "(A)", "source": "pubmedqa"},
] * 2


def run(model, *args):
    return medtune("eval", "choice", "--model", model, *map(str, args))


def outputs(out):
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return metrics, rows


def check_consistent(metrics, rows, n):
    """metrics.json and predictions.jsonl agree: counts add up, accuracy is the rows' mean."""
    assert metrics["task"] == "choice" and metrics["group_by"] == "subject"
    assert metrics["samples"] == "predictions.jsonl" and metrics["seconds"] > 0
    assert metrics["overall"]["n"] == len(rows) == n
    assert sum(g["n"] for g in metrics["groups"].values()) == n
    assert metrics["overall"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / n)
    for name, group in metrics["groups"].items():
        mine = [r for r in rows if r["group"] == name]
        assert group["n"] == len(mine)
        assert group["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
    for r in rows:
        assert {"id", "group", "question", "options", "answer", "prediction", "correct"} <= set(r)
        assert r["correct"] == (r["prediction"] == r["answer"])


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    path.write_text(json.dumps(BENCH, ensure_ascii=False), encoding="utf-8")
    return path


def test_loglik_on_a_synthetic_benchmark(varied_dir, bench_file, tmp_path):
    proc = run(varied_dir, "--data", bench_file, "--batch-size", "3", "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics, rows = outputs(tmp_path)
    check_consistent(metrics, rows, 10)
    assert set(metrics["groups"]) == {"cmb-single", "cmexam", "medqa-usmle", "pubmedqa"}
    assert "macro_f1" in metrics["groups"]["pubmedqa"] and "macro_f1" not in metrics["overall"]
    multi = [r for r in rows if r["answer"] == "AC"]
    assert len(multi[0]["scores"]) == 11 and len(multi[0]["prediction"]) >= 2
    assert set(rows[0]["scores"]) == {"A", "B", "C"} and rows[0]["prediction"] in "ABC"
    assert "cmexam" in proc.stdout and "overall" in proc.stdout


def test_generate_counts_unextractable_answers(varied_dir, bench_file, tmp_path):
    proc = run(varied_dir, "--data", bench_file, "--method", "generate", "--max-new-tokens", "6",
               "--output", tmp_path, "--limit", "6")
    assert proc.returncode == 0, proc.stderr
    metrics, rows = outputs(tmp_path)
    check_consistent(metrics, rows, 6)
    none = sum(not r["prediction"] for r in rows)
    assert metrics["skipped"]["no answer found"] == metrics["overall"]["no_answer"] == none
    assert all("response" in r for r in rows)


def test_few_shot_from_dev_and_missing_dev(varied_dir, bench_file, tmp_path):
    dev = write_jsonl(tmp_path / "dev.jsonl", [
        {"question": "糖尿病一线用药", "options": {"A": "二甲双胍", "B": "胰岛素"}, "answer": "A",
         "source": "cmexam"}])
    proc = run(varied_dir, "--data", bench_file, "--shots", "2", "--dev", dev, "--output", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    metrics, rows = outputs(tmp_path / "o")
    check_consistent(metrics, rows, 10)
    assert metrics["settings"]["shots"] == 2 and metrics["settings"]["dev"] == [str(dev)]
    proc = run(varied_dir, "--data", bench_file, "--shots", "2", "--output", tmp_path / "p")
    assert_one_line_error(proc, "--shots 2 needs dev examples")


def test_bad_input(varied_dir, tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    assert_one_line_error(run(varied_dir, "--data", odd, "--output", tmp_path / "a"),
                          "cannot detect the data format")
    assert_one_line_error(run(varied_dir, "--data", tmp_path / "nope.json", "--output", tmp_path / "b"),
                          "no such file")
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"question": "Q1", "options": {"A": "x", "B": "y"}, "answer": "A"},
        {"question": "Q2", "options": {"A": "x", "B": "y"}, "answer": "E"},
        {"question": "Q3", "options": {"A": "x", "B": "y"}, "answer": "B"}])
    proc = run(varied_dir, "--data", bad, "--output", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    metrics, rows = outputs(tmp_path / "c")
    check_consistent(metrics, rows, 2)
    assert sum(metrics["skipped"].values()) == 1 and f"{bad}:2:" in proc.stderr


@needs_shared
@pytest.mark.parametrize("data, extra, n", [
    (["apollo/test/zh.json"], ["--limit", "20"], 20),
    (["medagents/medqa/test.jsonl"], ["--limit", "10"], 10),
    (["cmmlu/test/anatomy.csv"], ["--shots", "2", "--limit", "12"], 12),
    (["pubmedqa/ori_pqal.json", "pubmedqa/test_ground_truth.json"], ["--limit", "10"], 10),
])
def test_shared_benchmarks(tiny_dir, tmp_path, data, extra, n):
    proc = run(tiny_dir, "--data", *[SHARED_DATA / d for d in data], *extra, "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics, rows = outputs(tmp_path)
    check_consistent(metrics, rows, n)
    if data[0].startswith("cmmlu"):
        assert metrics["settings"]["dev"] == [str(SHARED_DATA / "cmmlu/dev/anatomy.csv")]
        assert set(metrics["groups"]) == {"anatomy"}
    if data[0].startswith("pubmedqa"):
        assert 0 <= metrics["overall"]["macro_f1"] <= 1 and set(metrics["groups"]) == {"pubmedqa"}
    if data[0].startswith("medagents"):
        assert set(metrics["groups"]) <= {"step1", "step2&3"}
