"""The serving store (SQLite: WAL, concurrent writers, PII redaction, bad URLs) and the feedback export."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.threads import run_threads

Q = [{"role": "user", "content": "患者张伟，电话13812345678，头痛三天怎么办？"}]
Q2 = [{"role": "user", "content": "What should I do about a fever?"}]


@pytest.fixture
def store(tmp_path):
    from medtune.serving.store import FeedbackStore

    s = FeedbackStore.open(str(tmp_path / "feedback.db"))
    yield s
    s.close()


def test_sqlite_file_is_in_wal_mode_with_every_table(store, tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "feedback.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "responses", "feedback", "audit"} <= tables


def test_responses_and_feedback_round_trip_redacted(store):
    conversation = store.add_response("r1", Q, "请联系 Dr. Smith，电话 13900001111。", model="sft", surface="web")
    assert store.add_response("r2", Q, "多休息。", model="sft", conversation_id=conversation, parent_id="r1") == conversation
    got = store.response("r1")
    assert got["prompt"] == [{"role": "user", "content": "患者[NAME]，电话[PHONE]，头痛三天怎么办？"}]
    assert got["reply"] == "请联系 Dr. [NAME]，电话 [PHONE]。" and got["model"] == "sft" and got["surface"] == "web"
    assert store.response("r2")["parent_id"] == "r1"
    stored = store.add_feedback("r1", rating="down", corrected_text="请测血压，电话 13900001111", source="web")
    assert stored["rating"] == "down" and stored["corrected_text"] == "请测血压，电话 [PHONE]" and stored["id"] == 1
    assert store.add_feedback("never-served", rating="up") is None
    assert [f["rating"] for f in store.responses()[0]["feedback"]] == ["down"]
    with pytest.raises(ValueError):
        store.add_feedback("r1", rating="meh")
    assert store.counts() == {"conversations": 1, "responses": 2, "feedback": 1, "audit": 0}


def test_replies_of_one_request_share_a_conversation(store):
    store.add_replies("chatcmpl-x", Q2, ["a", "b", "c"], model="m")
    ids = [r["id"] for r in store.responses()]
    assert ids == ["chatcmpl-x", "chatcmpl-x:1", "chatcmpl-x:2"]
    assert len({r["conversation_id"] for r in store.responses()}) == 1


def test_audit_records_are_stored_redacted(store):
    record = {"request_id": "chatcmpl-13812345678", "surface": "api", "actions": [{"category": "emergency"}],
              "request": [{"role": "user", "content": "患者李明，电话13812345678，胸痛出汗"}], "latency_s": 0.5}
    store.write(record)
    (got,) = store.audit_records()
    assert got["request"][0]["content"] == "患者[NAME]，电话[PHONE]，胸痛出汗" and got["latency_s"] == 0.5
    assert got["request_id"] == "chatcmpl-13812345678"  # ids are not text: kept as they are
    assert record["request"][0]["content"].startswith("患者李明")  # the caller's record is not mutated


def test_regenerated_from_finds_the_replaced_answer_once(store):
    store.add_response("old", Q, "first", model="m")
    assert store.regenerated_from(Q) is None  # not regenerated away (yet)
    store.add_feedback("old", rating="down", source="regenerate")
    assert store.regenerated_from(Q) == "old" and store.regenerated_from(Q2) is None
    store.add_response("new", Q, "second", model="m", parent_id="old")
    assert store.regenerated_from(Q) is None  # it has its child now
    assert store.response("new")["conversation_id"] == store.response("old")["conversation_id"]


def test_concurrent_writers_lose_nothing(tmp_path):
    """Threads, each with its own store on one file (as separate requests and processes would be),
    writing responses, feedback and audit records at once: no "database is locked", nothing lost."""
    from medtune.serving.store import FeedbackStore

    path = str(tmp_path / "busy.db")
    FeedbackStore.open(path).close()
    threads, per_thread = 8, 25

    def work(t):
        s = FeedbackStore.open(path)
        try:
            for i in range(per_thread):
                rid = f"r{t}-{i}"
                s.add_response(rid, Q2, f"answer {t} {i}", model="m")
                assert s.add_feedback(rid, rating="up" if i % 2 else "down")["response_id"] == rid
                s.write({"request_id": rid, "surface": "api"})
        finally:
            s.close()

    run_threads(work, threads)
    s = FeedbackStore.open(path)
    n = threads * per_thread
    assert s.counts() == {"conversations": n, "responses": n, "feedback": n, "audit": n}
    s.close()


def test_one_store_shared_by_threads(store):
    """One store (one engine, its connection pool) used from many threads, as the API's does."""
    def work(t):
        for i in range(20):
            store.add_response(f"s{t}-{i}", Q2, "x", model="m")
            store.add_feedback(f"s{t}-{i}", rating="up")

    run_threads(work, 6)
    assert store.counts()["feedback"] == 120


@pytest.mark.parametrize("db,message", [
    ("postgresql://medtune:secret@127.0.0.1:1/medtune", "cannot open the database"),
    ("mysql://u@h/db", "only SQLite files and postgresql:// URLs are supported"),
    ("{tmp}/no/such/folder/f.db", "does not exist"),
    ("{tmp}", "is a directory"),
])
def test_bad_db_is_a_one_line_error(tmp_path, db, message):
    from medtune.errors import MedtuneError
    from medtune.serving.store import FeedbackStore

    with pytest.raises(MedtuneError, match=message) as err:
        FeedbackStore.open(db.format(tmp=tmp_path))
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


def test_a_file_that_is_not_a_database(tmp_path):
    from medtune.errors import MedtuneError
    from medtune.serving.store import FeedbackStore

    bad = tmp_path / "notes.db"
    bad.write_text("not sqlite at all\n" * 100)
    with pytest.raises(MedtuneError, match="cannot open the database"):
        FeedbackStore.open(str(bad))
    assert bad.read_text() == "not sqlite at all\n" * 100


def test_default_db_is_beside_the_model_logs(tmp_path):
    from medtune.errors import MedtuneError
    from medtune.serving.store import default_db, open_store

    assert default_db(str(tmp_path)) == str(tmp_path / "feedback.db")
    assert open_store("none", str(tmp_path)) is None and open_store("NONE", "hub/id") is None
    with pytest.raises(MedtuneError, match="no such local directory .*not a hub id.*--db PATH|URL or --db none"):
        default_db(str(tmp_path / "typo"))
    assert default_db("Qwen/Qwen3-8B") == str(Path("medtune-serve") / "Qwen--Qwen3-8B" / "feedback.db")


def test_default_db_of_a_hub_id_is_made_under_the_current_dir(tmp_path, monkeypatch):
    from medtune.serving.store import open_store

    monkeypatch.chdir(tmp_path)
    store = open_store(None, "org/model-7b")
    try:
        assert (tmp_path / "medtune-serve" / "org--model-7b" / "feedback.db").is_file()
    finally:
        store.close()


def _rated(store):
    """Q: r1 regenerated away -> r2 liked; r3 edited. Q2: r4 liked only. r5: no feedback."""
    store.add_response("r1", Q, "多喝水。", model="m")
    store.add_feedback("r1", rating="down", source="regenerate")
    store.add_response("r2", Q, "先量血压。", model="m", parent_id="r1")
    store.add_feedback("r2", rating="down")
    store.add_feedback("r2", rating="up")  # the latest rating counts
    store.add_response("r3", Q, "吃止痛药。", model="m")
    store.add_feedback("r3", rating="up")
    store.add_feedback("r3", corrected_text="持续头痛三天请就医，先量血压。")  # a correction beats the rating
    store.add_response("r4", Q2, "Rest.", model="m")
    store.add_feedback("r4", rating="up")
    store.add_response("r5", Q2, "Drink water.", model="m")


def test_export_pairs_and_kto(store):
    from medtune.data.readers.formats import read_kto, read_preference
    from medtune.serving.feedback_export import export_feedback

    _rated(store)
    out = export_feedback(store.responses())
    prompt = store.response("r1")["prompt"]
    pairs = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in out.pairs}
    assert pairs == {("先量血压。", "多喝水。"), ("先量血压。", "吃止痛药。"),
                     ("持续头痛三天请就医，先量血压。", "多喝水。"), ("持续头痛三天请就医，先量血压。", "吃止痛药。")}
    assert all(p["prompt"] == prompt for p in out.pairs) and len(out.pairs) == 4
    assert {(k["completion"][0]["content"], k["label"]) for k in out.kto} == {
        ("先量血压。", True), ("持续头痛三天请就医，先量血压。", True), ("多喝水。", False), ("吃止痛药。", False),
        ("Rest.", True)}
    assert out.skipped == {"response without feedback": 1,
                           "prompt with only liked or edited answers (no rejected one to pair with)": 1}
    for p in out.pairs:
        assert read_preference(p) == p
    for k in out.kto:
        assert read_kto(k) == k


def test_export_skips_identical_and_empty_answers_with_reasons(store):
    from medtune.serving.feedback_export import export_feedback

    store.add_response("a", Q2, "Same.", model="m")
    store.add_feedback("a", rating="up")
    store.add_response("b", Q2, "Same.", model="m")
    store.add_feedback("b", rating="down")
    store.add_response("c", Q, "", model="m")  # stopped before the first token, then regenerated
    store.add_feedback("c", rating="down", source="regenerate")
    store.add_response("d", Q, "好。", model="m")
    store.add_feedback("d", rating="up")
    store.add_feedback("d", rating="none")  # taken back: unrated
    out = export_feedback(store.responses())
    assert out.pairs == []
    assert out.skipped["pair whose chosen and rejected answers are the same text"] == 1
    assert out.skipped["response without feedback"] == 1
    assert any("empty" in why for why in out.skipped)
