"""The real ``medtune`` command line, as a user runs it: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONVERSATIONS, write_jsonl
from tests.helpers.cli import assert_one_line_error, medtune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    proc = medtune("model", "tiny", "--arch", "qwen2", "--hidden", "32", "--vocab-size", "600",
                   "-o", root / "tiny")
    assert proc.returncode == 0, proc.stderr
    data = write_jsonl(root / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 4)
    cfg = {"stage": "sft", "model": {"path": str(root / "tiny")},
           "data": {"train": [str(data)], "max_length": 128},
           "adapter": {"method": "lora", "rank": 4}, "train": {"epochs": 2, "batch_size": 4},
           "output": str(root / "run")}
    (root / "sft.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return root


def test_help_lists_commands():
    proc = medtune("--help")
    assert proc.returncode == 0
    for command in ("demo", "train", "pipeline", "model", "chat"):
        assert command in proc.stdout


def test_help_does_not_import_torch():
    code = "import sys; from medtune.cli.main import build_parser; build_parser(); " \
           "print(sorted(m for m in ('torch','transformers','datasets','peft','trl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_then_chat(workspace):
    proc = medtune("-q", "train", workspace / "sft.yaml", "train.learning_rate=5e-3")
    assert proc.returncode == 0, proc.stderr
    run = workspace / "run"
    assert (run / "adapter_config.json").is_file() and (run / "lineage.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 5e-3
    chat = medtune("chat", "--model", run, "--max-new-tokens", "8",
                   stdin="高血压有哪些典型症状？\nclear\n感冒挂什么科？\nstop\nnever read\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("Assistant:") == 2 and "(history cleared)" in chat.stdout


def test_rerun_with_different_config_is_refused(workspace):
    same = medtune("train", workspace / "sft.yaml", "train.learning_rate=5e-3")  # as test_train_then_chat
    assert same.returncode == 0 and "already holds this finished run; skipped" in same.stdout
    proc = medtune("-q", "train", workspace / "sft.yaml", "train.epochs=1")
    assert_one_line_error(proc, "already holds a different run")


@pytest.mark.parametrize("override,pattern", [
    ("train.learnig_rate=1", "unknown key 'train.learnig_rate' (did you mean 'learning_rate'?)"),
    ("model.template=chatmll", "unknown template 'chatmll' (did you mean 'chatml'?)"),
    ("data.format=alpacca", "unknown format 'alpacca' (did you mean 'alpaca'?)"),
    ("model.path=./no/such/model", "model path './no/such/model' not found"),
    ("data.train=[missing.jsonl]", "missing.jsonl: no such file"),
])
def test_bad_input_gives_one_line_error(workspace, override, pattern):
    proc = medtune("-q", "train", workspace / "sft.yaml", override, f"output={workspace / 'bad'}")
    assert_one_line_error(proc, pattern)
    assert not (workspace / "bad" / "lineage.json").exists()


def test_bad_corpus_inputs(workspace):
    import gzip

    trunc = workspace / "trunc.jsonl.gz"
    trunc.write_bytes(gzip.compress((json.dumps({"messages": CONVERSATIONS[0]}) + "\n").encode() * 500)[:-20])
    for entry, pattern in [(workspace / "none/**/*.jsonl", "the pattern matches no files"),
                           (trunc, "cannot decompress"), ("hf:medtune-test/absent", "offline")]:
        proc = medtune("-q", "train", workspace / "sft.yaml", f"data.train=[{entry}]", f"output={workspace / 'b5'}",
                       env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
        assert_one_line_error(proc, pattern)


def test_bad_data_lines(workspace):
    bad = workspace / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CONVERSATIONS[0]}) + "\n{not json\n", encoding="utf-8")
    proc = medtune("-q", "train", workspace / "sft.yaml", f"data.train=[{bad}]", f"output={workspace / 'b2'}")
    assert_one_line_error(proc, f"{bad}:2: invalid JSON")
    empty = workspace / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    proc = medtune("-q", "train", workspace / "sft.yaml", f"data.train=[{empty}]", f"output={workspace / 'b3'}")
    assert_one_line_error(proc, "empty")
    alpaca = workspace / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n" + json.dumps({"instruction": "q"}) + "\n")
    proc = medtune("-q", "train", workspace / "sft.yaml", f"data.train=[{alpaca}]", f"output={workspace / 'b4'}")
    assert_one_line_error(proc, f'{alpaca}:2: field "output" missing (format alpaca)')


def test_pipeline_runs_stages_in_order(workspace, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("高血压的典型症状是头痛头晕。\n糖尿病的一线用药是二甲双胍。\n" * 5, encoding="utf-8")
    pipe = {"base": {"path": str(workspace / "tiny")}, "output": str(tmp_path / "pipe"),
            "stages": [
                {"name": "pt", "stage": "pt", "data": {"train": [str(text)], "max_length": 64},
                 "adapter": {"method": "full"}, "train": {"epochs": 1, "batch_size": 2}},
                {"name": "sft", "stage": "sft", "data": {"train": [str(workspace / "sft.jsonl")]},
                 "adapter": {"method": "lora", "rank": 4}, "train": {"epochs": 1, "batch_size": 4}},
            ]}
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(pipe), encoding="utf-8")
    proc = medtune("-q", "pipeline", tmp_path / "pipe.yaml")
    assert proc.returncode == 0, proc.stderr
    lineage = json.loads((tmp_path / "pipe" / "sft" / "lineage.json").read_text())
    assert Path(lineage["parent_model"]) == tmp_path / "pipe" / "pt"
    from medtune import ChatModel

    reply, history = ChatModel.load(tmp_path / "pipe" / "sft", max_new_tokens=4).chat("你好")
    assert len(history) == 2 and history[1]["content"] == reply


def test_model_tiny_with_own_text_and_bad_text(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("发热是体温升高。\nFever means a raised body temperature.\n" * 20, encoding="utf-8")
    proc = medtune("-q", "model", "tiny", "--text", corpus, "--vocab-size", "300", "-o", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tok.decode(tok("发热是体温升高。")["input_ids"]) == "发热是体温升高。"
    assert_one_line_error(medtune("model", "tiny", "--text", tmp_path / "nope.txt", "-o", tmp_path / "x"),
                          "nope.txt: no such text file")
    assert_one_line_error(medtune("model", "tiny", "--arch", "gpt5", "-o", tmp_path / "y"),
                          "unknown arch 'gpt5'")
