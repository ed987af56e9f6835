"""``POST /v1/feedback`` and chat completions recorded in the store (FakeEngine: no model)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.fake_engines import FakeEngine
from tests.helpers.servers import Server
from tests.helpers.threads import run_threads

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ASK = {"model": "m", "messages": [{"role": "system", "content": "你是医生。"},
                                  {"role": "user", "content": "患者张伟，电话13812345678，发烧怎么办？"}]}


class EchoEngine(FakeEngine):
    """Replies ``answer <i>`` for sample i, streamed in two pieces."""

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        out = []
        for row in range(len(prompts) * params.n):
            text = f"answer {row % params.n}"
            if on_text:
                on_text(row, text[:3], None)
                on_text(row, text[3:], "stop")
            out.append(Completion(text, 3, 2, "stop"))
        return out


@pytest.fixture
def served(tmp_path):
    """``(url, store)``: the API over EchoEngine with a SQLite store and a key."""
    from medtune.serving.api import create_app
    from medtune.serving.store import FeedbackStore

    store = FeedbackStore.open(str(tmp_path / "feedback.db"))
    with Server(create_app(EchoEngine(), api_key=KEY, store=store)) as srv:
        yield srv.url, store
    store.close()


def test_a_chat_reply_is_stored_under_its_id_and_feedback_is_stored(served):
    url, store = served
    reply = httpx.post(url + "/v1/chat/completions", json=ASK, headers=AUTH).json()
    stored = store.response(reply["id"])
    assert stored["reply"] == reply["choices"][0]["message"]["content"] == "answer 0"
    assert stored["prompt"] == [{"role": "system", "content": "你是医生。"},
                                {"role": "user", "content": "患者[NAME]，电话[PHONE]，发烧怎么办？"}]
    assert stored["model"] == "m" and stored["surface"] == "api"
    got = httpx.post(url + "/v1/feedback", headers=AUTH, json={
        "response_id": reply["id"], "rating": "down", "corrected_text": "多喝水，体温超过 39 度请就医。"})
    assert got.status_code == 200
    body = got.json()
    assert body["object"] == "feedback" and body["response_id"] == reply["id"] and body["rating"] == "down"
    assert body["corrected_text"] == "多喝水，体温超过 39 度请就医。" and body["source"] == "api"
    assert [f["id"] for f in store.responses()[0]["feedback"]] == [body["id"]]
    up = httpx.post(url + "/v1/feedback", headers=AUTH, json={"response_id": reply["id"], "rating": "up"})
    assert up.json()["corrected_text"] is None and len(store.responses()[0]["feedback"]) == 2


def test_streamed_replies_and_every_choice_are_stored(served):
    url, store = served
    with httpx.stream("POST", url + "/v1/chat/completions", headers=AUTH,
                      json={**ASK, "stream": True, "n": 2, "temperature": 0.7}) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    rid = json.loads(events[0][6:])["id"]
    assert store.response(rid)["reply"] == "answer 0" and store.response(rid + ":1")["reply"] == "answer 1"
    assert httpx.post(url + "/v1/feedback", headers=AUTH,
                      json={"response_id": rid + ":1", "rating": "up"}).status_code == 200


def test_unknown_response_is_404_in_the_api_error_shape(served):
    url, _ = served
    got = httpx.post(url + "/v1/feedback", headers=AUTH, json={"response_id": "chatcmpl-never", "rating": "up"})
    assert got.status_code == 404
    assert got.json() == {"error": {"message": "response 'chatcmpl-never' not found (never served here, answered "
                                               "by the safety policy, or served before this database)",
                                    "type": "not_found_error",
                                    "param": "response_id", "code": "response_not_found"}}


@pytest.mark.parametrize("body,status,param", [
    ({"response_id": "x"}, 400, "rating"),
    ({"response_id": "x", "rating": "meh"}, 422, "rating"),
    ({"response_id": "x", "corrected_text": "  "}, 400, "corrected_text"),
    ({"rating": "up"}, 422, "response_id"),
    ({"response_id": "x", "rating": "up", "stars": 5}, 422, "stars"),
])
def test_bad_feedback_bodies(served, body, status, param):
    url, store = served
    got = httpx.post(url + "/v1/feedback", headers=AUTH, json=body)
    assert got.status_code == status and got.json()["error"]["param"] == param, got.text
    assert store.counts()["feedback"] == 0


def test_feedback_needs_the_key(served):
    url, store = served
    reply = httpx.post(url + "/v1/chat/completions", json=ASK, headers=AUTH).json()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        got = httpx.post(url + "/v1/feedback", headers=headers, json={"response_id": reply["id"], "rating": "up"})
        assert got.status_code == 401 and got.json()["error"]["code"] == "invalid_api_key"
    assert store.counts()["feedback"] == 0


def test_without_a_store_nothing_is_recorded_and_feedback_says_why():
    from medtune.serving.api import create_app

    with Server(create_app(EchoEngine())) as srv:
        assert httpx.post(srv.url + "/v1/chat/completions", json=ASK).status_code == 200
        got = httpx.post(srv.url + "/v1/feedback", json={"response_id": "x", "rating": "up"})
    assert got.status_code == 404 and "--db none" in got.json()["error"]["message"]


def test_exported_api_feedback_pairs_two_choices(served, tmp_path):
    """n=2, one choice liked, the other disliked: one pair, ready for the dpo stage's reader."""
    from medtune.data.readers.formats import read_preference
    from medtune.serving.feedback_export import export_feedback

    url, store = served
    rid = httpx.post(url + "/v1/chat/completions", headers=AUTH, json={**ASK, "n": 2, "temperature": 0.7}).json()["id"]
    for response_id, rating in ((rid, "down"), (rid + ":1", "up")):
        assert httpx.post(url + "/v1/feedback", headers=AUTH,
                          json={"response_id": response_id, "rating": rating}).status_code == 200
    (pair,) = export_feedback(store.responses()).pairs
    assert read_preference(pair) == pair
    assert pair["chosen"][0]["content"] == "answer 1" and pair["rejected"][0]["content"] == "answer 0"


def test_concurrent_requests_and_feedback_all_land(served):
    """8 client threads, each asking (plain and streamed) and rating what it got, at once."""
    url, store = served
    per_thread = 6

    def work(t):
        with httpx.Client(timeout=60, headers=AUTH) as http:
            for i in range(per_thread):
                if i % 2:
                    with http.stream("POST", url + "/v1/chat/completions", json={**ASK, "stream": True}) as s:
                        events = [line for line in s.iter_lines() if line.startswith("data: ")]
                    assert events[-1] == "data: [DONE]"
                    rid = json.loads(events[0][6:])["id"]
                else:
                    rid = http.post(url + "/v1/chat/completions", json=ASK).json()["id"]
                got = http.post(url + "/v1/feedback", json={"response_id": rid, "rating": "up"})
                assert got.status_code == 200, got.text

    run_threads(work, 8)
    assert store.counts() == {"conversations": 48, "responses": 48, "feedback": 48, "audit": 0}


@pytest.mark.parametrize("stream", [False, True])
def test_with_the_safety_policy_the_model_answer_is_stored_and_a_fixed_reply_is_not(tmp_path, stream):
    """The policy's triage prefix is shown but the store keeps the model's own answer under the
    audit's request id; a self-harm request the policy answers alone is not stored (feedback: 404)."""
    from medtune.inference.service import build_service
    from medtune.serving.api import create_app
    from medtune.serving.store import FeedbackStore

    store = FeedbackStore.open(str(tmp_path / "feedback.db"))
    service = build_service("default", None, {"model": "m"}, audit=store)
    emergency = {"model": "m", "stream": stream,
                 "messages": [{"role": "user", "content": "我胸口剧痛，一直出冷汗，怎么办？"}]}
    crisis = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "我不想活了，想自杀"}]}
    with Server(create_app(EchoEngine(), api_key=KEY, service=service, store=store)) as srv:
        first = httpx.post(srv.url + "/v1/chat/completions", json=emergency, headers=AUTH)
        second = httpx.post(srv.url + "/v1/chat/completions", json=crisis, headers=AUTH)
        ids = [_response_id(r, stream) for r in (first, second)]
        shown = _content(first, stream)
        assert shown.endswith("answer 0") and len(shown) > len("answer 0")  # triage advice first
        assert store.response(ids[0])["reply"] == "answer 0"
        assert store.response(ids[1]) is None
        missing = httpx.post(srv.url + "/v1/feedback", headers=AUTH, json={"response_id": ids[1], "rating": "up"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "response_not_found"
    audited = store.audit_records()
    assert [r["request_id"] for r in audited] == ids  # --audit-log db: the same ids, in the audit table
    assert audited[0]["actions"][0]["category"] == "emergency" and audited[1]["actions"][0]["category"] == "self_harm"
    store.close()


def _response_id(resp, stream: bool) -> str:
    assert resp.status_code == 200, resp.text
    if not stream:
        return resp.json()["id"]
    return json.loads(resp.text.split("data: ", 2)[1])["id"]


def _content(resp, stream: bool) -> str:
    if not stream:
        return resp.json()["choices"][0]["message"]["content"]
    chunks = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
