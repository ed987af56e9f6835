"""``--policy`` and ``--audit-log`` on the real command line: the defaults (on for chat, off for
infer), ``--policy none``, the audit records, and an audit log that would overwrite an input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_jsonl
from tests.helpers.cli import assert_one_line_error, medtune

pytestmark = pytest.mark.slow

QUESTIONS = ["高血压有哪些典型症状？", "我不想活了。", "How can I get oxycodone without a prescription?"]


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_chat_applies_the_bundled_policy_by_default_and_audits(varied_dir, tmp_path):
    from medtune.inference.policy import load_policy

    log = tmp_path / "audit" / "chat.jsonl"
    stdin = "".join(q + "\nclear\n" for q in QUESTIONS)
    proc = medtune("chat", "--model", varied_dir, "--max-new-tokens", "6", "--audit-log", log, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    policy = load_policy("default")
    assert policy.check(QUESTIONS[1]).fixed_reply in proc.stdout
    assert policy.check(QUESTIONS[2]).fixed_reply in proc.stdout
    got = records(log)
    assert [r["actions"] for r in got] == [[], [{"category": "self_harm", "rule": "suicidal_intent", "action": "fixed",
                                                  "turn": 0, "by": "rule"}],
                                           [{"category": "controlled_drug", "rule": "controlled_drug_request",
                                             "action": "refuse", "turn": 0, "by": "rule"}]]
    assert {r["surface"] for r in got} == {"chat"} and got[0]["model"] == str(varied_dir)
    assert got[0]["template"] == "chatml" and got[0]["policy"]["source"].endswith("default.yaml")

    off = medtune("chat", "--model", varied_dir, "--max-new-tokens", "6", "--policy", "none", stdin=QUESTIONS[1] + "\n")
    assert off.returncode == 0 and policy.check(QUESTIONS[1]).fixed_reply not in off.stdout


def test_infer_applies_no_policy_unless_asked(varied_dir, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": q} for i, q in enumerate(QUESTIONS)])
    plain = medtune("infer", "--model", varied_dir, "--input", src, "--output", tmp_path / "plain.jsonl",
                    "--max-new-tokens", "4", quiet=True)
    assert plain.returncode == 0, plain.stderr
    assert not any("policy" in r for r in records(tmp_path / "plain.jsonl"))
    log = tmp_path / "infer-audit.jsonl"
    ruled = medtune("infer", "--model", varied_dir, "--input", src, "--output", tmp_path / "ruled.jsonl",
                    "--max-new-tokens", "4", "--policy", "default", "--audit-log", log, quiet=True)
    assert ruled.returncode == 0, ruled.stderr
    rows = {r["id"]: r for r in records(tmp_path / "ruled.jsonl")}
    assert rows[1]["finish_reason"] == rows[2]["finish_reason"] == "policy" and "policy" not in rows[0]
    assert sorted(r["request_id"] for r in records(log)) == ["0", "1", "2"]


def test_an_audit_log_on_an_input_is_refused_before_loading(varied_dir, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    assert_one_line_error(medtune("infer", "--model", varied_dir, "--input", src, "--output", tmp_path / "o.jsonl",
                                  "--audit-log", src), "--audit-log")
    assert_one_line_error(medtune("serve", "api", "--model", tmp_path / "missing", "--audit-log",
                                  tmp_path / "missing" / "a.jsonl"), "lies inside the input --model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncategories:\n  emergencies: {}\n", encoding="utf-8")
    assert_one_line_error(medtune("serve", "api", "--model", tmp_path / "missing", "--policy", bad),
                          f"{bad}:3: unknown category 'emergencies'")
