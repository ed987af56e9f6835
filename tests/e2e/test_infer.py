"""``medtune infer``: every input shape, bad rows counted or refused, settings recorded, and a run
killed mid-way continues to the same output with no duplicates."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import write_jsonl
from tests.helpers.cli import assert_one_line_error, medtune

pytestmark = pytest.mark.slow

ROWS = [
    {"id": "a", "messages": [{"role": "user", "content": "高血压有哪些典型症状？"}]},
    {"id": "b", "prompt": "感冒挂什么科？"},
    {"instruction": "解释下面的检查结果", "input": "血糖 7.8 mmol/L"},
    {"id": 7, "messages": [{"role": "system", "content": "你是医生。"},
                           {"role": "user", "content": "糖尿病吃什么药？"},
                           {"role": "assistant", "content": "二甲双胍。"},
                           {"role": "user", "content": "有副作用吗？"}]},
]


def rows_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_infer_answers_every_shape_like_chat_and_records_settings(varied_dir, tmp_path):
    from medtune.inference.chat import ChatModel

    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    proc = medtune("infer", "--model", varied_dir, "--input", src, "--output", out, "--batch-size", "3",
                   "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    assert "4 generated" in proc.stdout and "rows/s" in proc.stdout
    got = {r["id"]: r for r in rows_of(out)}
    assert set(got) == {"a", "b", 3, 7}
    bot = ChatModel.load(varied_dir, device="cpu", max_new_tokens=8)
    assert got["a"]["response"] == bot.chat("高血压有哪些典型症状？")[0]
    assert got[3]["response"] == bot.chat("解释下面的检查结果\n血糖 7.8 mmol/L")[0]
    assert got[7]["response"] == bot.chat("有副作用吗？", ROWS[3]["messages"][1:3], system="你是医生。")[0]
    assert got["b"]["prompt"] == "感冒挂什么科？" and got["b"]["completion_tokens"] == 8
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["template"] == "chatml" and meta["params"]["max_tokens"] == 8 and meta["status"] == "finished"
    assert meta["generated"] == 4 and "<|im_start|>" in meta["chat_template"]


def test_bad_rows_are_counted_with_line_or_refused_with_strict(varied_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([json.dumps(ROWS[1]), '{"prompt": "cut in ha', json.dumps({"id": "x"}),
                              json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}),
                              json.dumps(ROWS[1])]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = medtune("infer", "--model", varied_dir, "--input", src, "--output", out, "--max-new-tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert "1 generated" in proc.stdout and "4 skipped" in proc.stdout
    assert "not valid JSON: 1" in proc.stdout and "duplicate id: 1" in proc.stdout
    assert f"{src}:2" in proc.stderr  # the first example of each reason is named with file:line
    strict = medtune("infer", "--model", varied_dir, "--input", src, "--output", tmp_path / "o2.jsonl", "--strict")
    assert_one_line_error(strict, f"error: {src}:2: not valid JSON (")
    assert not (tmp_path / "o2.jsonl").exists()


def test_changed_settings_are_refused_unless_overwrite(varied_dir, tmp_path):
    src, out = write_jsonl(tmp_path / "in.jsonl", ROWS[:2]), tmp_path / "out.jsonl"
    assert medtune("infer", "--model", varied_dir, "--input", src, "--output", out, "--max-new-tokens", "2").returncode == 0
    again = medtune("infer", "--model", varied_dir, "--input", src, "--output", out, "--max-new-tokens", "3")
    assert again.returncode == 2 and "different params" in again.stderr and "--overwrite" in again.stderr
    same = medtune("infer", "--model", varied_dir, "--input", src, "--output", out, "--max-new-tokens", "2")
    assert "0 generated, 2 already in" in same.stdout
    over = medtune("infer", "--model", varied_dir, "--input", src, "--output", out, "--max-new-tokens", "3", "--overwrite")
    assert over.returncode == 0 and len(rows_of(out)) == 2 and rows_of(out)[0]["completion_tokens"] == 3


def test_a_killed_run_continues_to_the_uninterrupted_output(varied_dir, tmp_path):
    rows = [{"id": i, "prompt": f"第{i}个问题：头痛{i}天怎么办？"} for i in range(40)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--model", str(varied_dir), "--input", str(src), "--batch-size", "2", "--max-new-tokens", "24"]
    whole = tmp_path / "whole.jsonl"
    assert medtune("infer", *args, "--output", whole).returncode == 0
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "medtune", "-q", "infer", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while (not out.exists() or len(out.read_bytes().splitlines()) < 4) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(rows_of(out))
    assert 4 <= partial < 40, partial
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"id": 39, "respo')  # a line the kill cut in half
    resumed = medtune("infer", *args, "--output", out)
    assert resumed.returncode == 0 and f"{40 - partial} generated, {partial} already in" in resumed.stdout
    by_id = lambda path: sorted(rows_of(path), key=lambda r: r["id"])
    assert by_id(out) == by_id(whole)


def test_bitsandbytes_loading_is_refused_on_cpu(varied_dir, tmp_path):
    import torch

    from tests.helpers.cli import assert_one_line_error

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    src = write_jsonl(tmp_path / "in.jsonl", ROWS[:1])
    proc = medtune("infer", "--model", varied_dir, "--input", src, "--output", tmp_path / "o.jsonl", "--load-in", "8bit")
    assert_one_line_error(proc, "--load-in 8bit (bitsandbytes) needs a CUDA GPU")
    assert not (tmp_path / "o.jsonl").exists()


def test_int8_cpu_loading_answers_close_to_fp32(varied_dir, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    fp32, int8 = tmp_path / "fp32.jsonl", tmp_path / "int8.jsonl"
    common = ["--model", varied_dir, "--input", src, "--max-new-tokens", "4"]
    assert medtune("infer", *common, "--output", fp32).returncode == 0
    proc = medtune("infer", *common, "--output", int8, "--load-in", "int8-cpu")
    assert proc.returncode == 0, proc.stderr
    assert len(rows_of(int8)) == 4 and all(r["completion_tokens"] >= 1 for r in rows_of(int8))
    first = lambda path: [r["response"][:1] for r in rows_of(path)]
    assert sum(a == b for a, b in zip(first(fp32), first(int8))) >= 3  # rounding may flip a near tie
