"""The feedback store through the command line: ``serve`` refusing a database at start, and
``medtune data feedback export`` (counts, atomic output, guards)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import assert_one_line_error, medtune
from tests.unit.test_store import _rated


@pytest.fixture
def store(tmp_path):
    from medtune.serving.store import FeedbackStore

    s = FeedbackStore.open(str(tmp_path / "feedback.db"))
    yield s
    s.close()


def test_serve_with_an_unreachable_db_fails_at_start(tmp_path):
    """exit 2, one line, before the model loads (the model path does not even exist)."""
    for kind in ("api", "web"):
        proc = medtune("serve", kind, "--model", tmp_path / "not-loaded", "--port", "1",
                       "--db", "postgresql://u:pw@127.0.0.1:1/x")
        assert_one_line_error(proc, "cannot open the database")
        assert "pw" not in proc.stderr


# ---------------------------------------------------------------- export




def test_export_cli_counts_writes_atomically_and_guards_the_db(store, tmp_path):
    _rated(store)
    db = tmp_path / "feedback.db"
    pairs, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    proc = medtune("data", "feedback", "export", "--db", db, "-o", pairs, "--kto", kto)
    assert proc.returncode == 0, proc.stderr
    assert "5 responses -> 4 pairs, 5 KTO records | 2 skipped" in proc.stdout
    assert "response without feedback: 1" in proc.stdout
    assert len(pairs.read_text().splitlines()) == 4 and len(kto.read_text().splitlines()) == 5
    assert json.loads(pairs.read_text().splitlines()[0])["rejected"][0]["role"] == "assistant"
    before = store.responses()
    assert_one_line_error(medtune("data", "feedback", "export", "--db", db, "-o", db), "--db")
    assert_one_line_error(medtune("data", "feedback", "export", "--db", f"sqlite:///{db}", "-o", pairs, "--kto", db),
                          "--db")
    assert_one_line_error(medtune("data", "feedback", "export", "--db", db, "-o", pairs, "--kto", pairs),
                          "same file")
    assert store.responses() == before
    assert_one_line_error(medtune("data", "feedback", "export", "--db", tmp_path / "nope.db", "-o", pairs),
                          "no such database file")
    assert not (tmp_path / "nope.db").exists()




def test_export_cli_with_nothing_to_export_keeps_the_old_output(tmp_path):
    from medtune.serving.store import FeedbackStore

    db = tmp_path / "empty.db"
    FeedbackStore.open(str(db)).close()
    out = tmp_path / "pairs.jsonl"
    out.write_text("previous good output\n")
    proc = medtune("data", "feedback", "export", "--db", db, "-o", out)
    assert_one_line_error(proc, "no preference pair to export")
    assert out.read_text() == "previous good output\n"
