"""The serving store on a real PostgreSQL server started by the test (skips, with the reason, when
none can start): round trip, concurrent writers, the API, the export CLI, a bad database name."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.cli import assert_one_line_error, medtune
from tests.helpers.servers import Server
from tests.helpers.threads import run_threads

Q = [{"role": "user", "content": "患者张伟，电话13812345678，头痛怎么办？"}]


@pytest.fixture(scope="module")
def pg():
    from tests.helpers.postgres import PostgresServer, Unavailable

    try:
        server = PostgresServer().__enter__()
    except Unavailable as exc:
        pytest.skip(f"no PostgreSQL server could start: {exc}")
    yield server
    server.__exit__(None, None, None)


@pytest.fixture
def store(pg):
    from sqlalchemy import text

    from medtune.serving.store import FeedbackStore, metadata

    s = FeedbackStore.open(pg.url)
    yield s
    with s.engine.begin() as conn:  # a clean database for the next test
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DELETE FROM {table.name}"))
    s.close()


def test_round_trip_on_postgresql(store):
    assert store.engine.dialect.name == "postgresql" and store.engine.dialect.driver == "psycopg"
    store.add_response("r1", Q, "多喝水。", model="m")
    store.add_feedback("r1", rating="down", source="regenerate")
    assert store.regenerated_from(Q) == "r1"
    store.add_response("r2", Q, "先量血压。", model="m", parent_id="r1")
    store.add_feedback("r2", rating="up")
    store.write({"request_id": "r2", "surface": "api", "reply": "电话13812345678"})
    assert store.response("r1")["prompt"][0]["content"] == "患者[NAME]，电话[PHONE]，头痛怎么办？"
    assert store.response("r2")["parent_id"] == "r1"
    assert store.audit_records()[0]["reply"] == "电话[PHONE]"
    assert store.counts() == {"conversations": 1, "responses": 2, "feedback": 2, "audit": 1}


def test_concurrent_writers_on_postgresql(store, pg):
    from medtune.serving.store import FeedbackStore

    def work(t):
        s = FeedbackStore.open(pg.url)
        try:
            for i in range(20):
                s.add_response(f"p{t}-{i}", Q, "x", model="m")
                s.add_feedback(f"p{t}-{i}", rating="up")
        finally:
            s.close()

    run_threads(work, 6)
    assert store.counts()["feedback"] == 120


def test_api_feedback_and_export_cli_on_postgresql(store, pg, tmp_path):
    from medtune.serving.api import create_app
    from tests.integration.test_feedback_api import ASK, EchoEngine

    with Server(create_app(EchoEngine(), store=store)) as srv:
        rid = httpx.post(srv.url + "/v1/chat/completions", json={**ASK, "n": 2, "temperature": 0.7}).json()["id"]
        for response_id, rating in ((rid, "down"), (rid + ":1", "up")):
            assert httpx.post(srv.url + "/v1/feedback", json={"response_id": response_id, "rating": rating}).status_code == 200
        assert httpx.post(srv.url + "/v1/feedback", json={"response_id": "nope", "rating": "up"}).status_code == 404
    out = tmp_path / "pairs.jsonl"
    proc = medtune("data", "feedback", "export", "--db", pg.url, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "2 responses -> 1 pairs" in proc.stdout and len(out.read_text().splitlines()) == 1


def test_a_database_that_does_not_exist_fails_at_start(pg, tmp_path):
    url = pg.url.rsplit("/", 1)[0] + "/no_such_db"
    proc = medtune("serve", "api", "--model", tmp_path / "not-loaded", "--db", url)
    assert_one_line_error(proc, "cannot open the database")
    assert "no_such_db" in proc.stderr
