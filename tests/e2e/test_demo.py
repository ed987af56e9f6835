"""The embedded demo through the real CLI: it must show real learning at every stage."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import assert_one_line_error, medtune

pytestmark = pytest.mark.slow


def test_demo_learns_facts_and_reports(tmp_path):
    out = tmp_path / "demo"
    proc = medtune("-q", "demo", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    acc = report["heldout_accuracy"]
    assert list(acc) == ["base", "pt", "sft"]
    assert acc["base"] < 0.05
    # Held-out question phrasing. The same code gives 0.903 on one 2-core machine and 0.814 on
    # another (floating-point order moves a model this small; the department relation swings
    # most): the bound is the README's, below the lowest value measured.
    assert acc["sft"] >= 0.75, acc
    cloze = report["cloze_accuracy"]
    assert cloze["pt"] >= cloze["base"] + 0.5, cloze  # pretraining alone stores the facts
    assert (out / "loss.png").stat().st_size > 10_000
    assert all(len(chat) >= 2 and chat[1]["content"] for chat in report["sample_chats"])
    assert (out / "sft" / "lineage.json").is_file() and (out / "sft" / "chat_template.jinja").is_file()
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "Training runs" in page and "Evaluation: factqa" in page and page.count("data:image/png;base64,") == 2
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    n = report["counts"]["heldout_questions"]
    # the eval table carries the measured accuracy, the model behind it and its n; a headline compares
    assert f"| sft | {out / 'sft'} | {100 * acc['sft']:.1f}% (n={n}) |" in md
    assert f"- Heldout accuracy: base {100 * acc['base']:.1f}% → pt {100 * acc['pt']:.1f}% → sft" in md
    assert f"(n={report['counts']['unseen_questions']})" in md  # unseen accuracy's own n
    assert "✓" in md and "final train loss" in md
    again = medtune("-q", "demo", "--out", out)
    assert_one_line_error(again, "already holds files")
