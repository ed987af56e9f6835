"""Tests for medtune.data.generate.passage_qa: passages → grounded Q&A against a local fake
OpenAI-compatible server (retries, cache, resume, order, grounding, token accounting)."""

import doctest
import json
import time

import pytest

from medtune.data.generate import passage_qa
from medtune.data.generate.passage_qa import (
    PassageQAGenerator,
    content_units,
    parse_qa_pairs,
    read_passages,
    support,
)
from medtune.errors import MedtuneError
from tests.conftest import write_jsonl
from tests.helpers.fake_openai import FakeOpenAI, grounded_pairs, reply_pairs


def test_module_doctests_pass():
    assert doctest.testmod(passage_qa).failed == 0


# --- passages: reading and grounding ---------------------------------------------------------


def test_read_passages_txt_paragraphs_lines_and_jsonl(tmp_path):
    paragraphs = tmp_path / "book.txt"
    paragraphs.write_text("第一段第一行。\n第一段第二行。\n\n\n短\n\n第三段。\n", encoding="utf-8")
    skipped = []
    got = list(read_passages(paragraphs, min_chars=3, on_skip=lambda *a: skipped.append(a)))
    assert got == [("book.txt:1", "第一段第一行。\n第一段第二行。"), ("book.txt:7", "第三段。")]
    assert skipped == [(5, "passage shorter than 3 characters")]
    lines = tmp_path / "lines.txt"
    lines.write_text("alpha passage\nbeta passage\n", encoding="utf-8")
    assert list(read_passages(lines, min_chars=1)) == [("lines.txt:1", "alpha passage"),
                                                       ("lines.txt:2", "beta passage")]
    rows = write_jsonl(tmp_path / "p.jsonl", [
        {"id": 7, "text": "高血压是常见病。"}, {"text": "糖尿病。"}, {"title": "no text"}])
    with pytest.raises(MedtuneError, match=r'p\.jsonl:3: field "text" missing'):
        list(read_passages(rows, min_chars=1))
    assert list(read_passages(rows, min_chars=1, on_skip=lambda *a: None)) == [
        ("7", "高血压是常见病。"), ("p.jsonl:2", "糖尿病。")]


def test_content_units_and_support():
    assert content_units("高血压的症状, Blood pressure is 0.5mg!") == [
        "高", "血", "压", "症", "状", "blood", "pressure", "0.5mg"]
    passage = set(content_units("Hypertension raises the risk of stroke."))
    assert support("The risk of stroke.", passage) == 1.0
    # "is" and "by" are stop words: stroke, risk found; cured, magic not.
    assert support("Stroke risk is cured by magic.", passage) == 0.5
    assert support("!!!", passage) == 0.0


def test_parse_qa_pairs_fence_and_strictness():
    body = '[{"question": "Q?", "answer": "A."}]'
    assert parse_qa_pairs(body) == parse_qa_pairs(f"```json\n{body}\n```") == [("Q?", "A.")]
    for bad in ("not json", '{"question": "Q", "answer": "A"}', '[{"question": "Q"}]'):
        with pytest.raises(ValueError):
            parse_qa_pairs(bad)


# --- passages: generation against the fake server --------------------------------------------

PASSAGES = [
    ("p1", ("高血压是以体循环动脉压升高为主要特征的临床综合征。长期高血压可导致心脑肾损害。"
            "治疗包括生活方式干预和降压药物。")),
    ("p2", ("Type 2 diabetes is marked by insulin resistance. Metformin is the usual first drug. "
            "Regular exercise improves glucose control.")),
    ("p3", "肺炎多由细菌或病毒感染引起。典型表现为发热、咳嗽、咳痰。胸部X线检查有助于诊断。"),
    ("p4", ("Asthma is a chronic inflammatory disease of the airways. Inhaled corticosteroids "
            "reduce attacks.")),
    ("p5", "冠心病的危险因素包括吸烟、高血脂和糖尿病。心绞痛是常见症状。"),
]


def expected_records(passages):
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "source": "passage", "passage_id": pid}
            for pid, text in passages for q, a in grounded_pairs(text)]


def generator(server, **kw):
    kw = {"backoff": 0.01, "timeout": 5.0, "concurrency": 2, **kw}
    return PassageQAGenerator(server.url, "fake-model", **kw)


def test_grounding_filter_drops_the_ungrounded_pair():
    with FakeOpenAI() as server:
        gen = generator(server)
        records = list(gen.run(PASSAGES))
    assert records == expected_records(PASSAGES)
    first_answer = "高血压是以体循环动脉压升高为主要特征的临床综合征。"
    assert records[0]["messages"][1]["content"] == first_answer
    generated = sum(len(reply_pairs(t)) for _, t in PASSAGES)
    s = gen.summary
    assert (s["passages"], s["requests"], s["failed"], s["cache_hits"]) == (5, 5, 0, 0)
    assert s["pairs_generated"] == generated and s["pairs_kept"] == len(records)
    assert s["ungrounded"] == len(PASSAGES) == generated - len(records)
    # min_support 0 keeps everything, including the invented pair.
    with FakeOpenAI() as server:
        assert len(list(generator(server, min_support=0.0).run(PASSAGES))) == generated


@pytest.mark.parametrize("status", [500, 429])
def test_transient_errors_are_retried(status):
    with FakeOpenAI(fail_first=3, fail_status=status) as server:
        gen = generator(server, concurrency=1)
        records = list(gen.run(PASSAGES[:2]))
    assert records == expected_records(PASSAGES[:2])
    assert server.requests == gen.summary["requests"] == 2 + 3
    assert gen.summary["failed"] == 0


def test_retry_after_is_honoured():
    with FakeOpenAI(fail_first=1, fail_status=429, retry_after="0.3") as server:
        start = time.monotonic()
        records = list(generator(server, concurrency=1).run(PASSAGES[:1]))
        assert time.monotonic() - start >= 0.3
    assert records == expected_records(PASSAGES[:1])


def test_garbage_reply_is_retried_and_fence_tolerated():
    with FakeOpenAI(garbage=1, fence=True) as server:
        gen = generator(server, concurrency=1)
        records = list(gen.run(PASSAGES[:2]))
    assert records == expected_records(PASSAGES[:2])
    assert gen.summary["requests"] == server.requests == 3


def test_passage_failing_after_retries_is_counted_with_reason(tmp_path):
    done = []
    with FakeOpenAI(garbage=100) as server:
        gen = generator(server, concurrency=1, retries=2, cache_dir=tmp_path)
        records = list(gen.run(PASSAGES[:2], progress=done.append))
    assert records == [] and done == ["p1", "p2"]
    assert server.requests == 2 * 3
    s = gen.summary
    assert (s["passages"], s["failed"], s["failed_reasons"]) == (2, 2, {"unparsable reply": 2})
    assert [pid for pid, _ in gen.failures] == ["p1", "p2"]
    assert "not JSON" in gen.failures[0][1]
    assert list(tmp_path.iterdir()) == []  # garbage is never cached


def test_wrong_api_key_is_an_immediate_clear_error():
    with FakeOpenAI(api_key="right") as server:
        gen = generator(server, api_key="wrong", concurrency=1, retries=4)
        with pytest.raises(MedtuneError, match="endpoint refused the API key .HTTP 401"):
            list(gen.run(PASSAGES))
        assert server.requests == 1
        ok = generator(server, api_key="right")
        assert list(ok.run(PASSAGES[:1])) == expected_records(PASSAGES[:1])


def test_concurrency_keeps_input_order():
    many = [(f"q{i}", f"Passage number {i} talks about fever. Fever needs rest.")
            for i in range(16)]
    # Early passages answer slowest, so completion order is the reverse of input order.
    def slow_first(passage):
        return 0.01 * (16 - int(passage.split()[2]))

    with FakeOpenAI(delay=slow_first) as server:
        records = list(generator(server, concurrency=8).run(many))
        assert server.max_in_flight > 1
        assert server.passages != [text for _, text in many]  # really finished out of order
    assert records == expected_records(many)
    assert [r["passage_id"] for r in records][::2] == [pid for pid, _ in many]


def test_cache_second_run_makes_no_requests(tmp_path):
    with FakeOpenAI() as server:
        first = generator(server, cache_dir=tmp_path)
        records = list(first.run(PASSAGES))
        paid = server.prompt_tokens + server.completion_tokens
        second = generator(server, cache_dir=tmp_path)
        assert list(second.run(PASSAGES)) == records
        assert server.requests == len(PASSAGES)
    s = second.summary
    assert (s["requests"], s["cache_hits"], s["saved_tokens"]) == (0, len(PASSAGES), paid)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (0, 0)
    assert len(list(tmp_path.glob("*.json"))) == len(PASSAGES)
    assert not list(tmp_path.glob("*.tmp"))
    # Another temperature is another request: the cache key covers it.
    with FakeOpenAI() as server:
        list(generator(server, cache_dir=tmp_path, temperature=0.1).run(PASSAGES[:1]))
        assert server.requests == 1


def test_interrupted_run_resumes_paying_only_for_missing(tmp_path):
    with FakeOpenAI() as server:
        it = generator(server, cache_dir=tmp_path, concurrency=1).run(PASSAGES)
        seen = []
        for rec in it:  # stop at the first record of the third passage
            if rec["passage_id"] not in seen:
                if len(seen) == 2:
                    break
                seen.append(rec["passage_id"])
        it.close()  # waits for the request in flight, whose reply is cached
        first_requests = server.requests
        assert 2 <= first_requests < len(PASSAGES)
        rerun = generator(server, cache_dir=tmp_path, concurrency=1)
        assert list(rerun.run(PASSAGES)) == expected_records(PASSAGES)
    # No passage is paid for twice: the rerun requests exactly the ones never answered.
    assert rerun.summary["requests"] == server.requests - first_requests
    assert rerun.summary["requests"] == len(PASSAGES) - first_requests
    assert rerun.summary["cache_hits"] == first_requests


def test_token_totals_match_server_usage():
    with FakeOpenAI(fail_first=1, garbage=1) as server:
        gen = generator(server, concurrency=3)
        list(gen.run(PASSAGES))
    s = gen.summary
    assert s["requests"] == server.requests == len(PASSAGES) + 2
    assert (s["prompt_tokens"], s["completion_tokens"]) == (server.prompt_tokens,
                                                           server.completion_tokens)
    assert s["prompt_tokens"] > 0


def test_timeouts_and_connection_errors_through_transport():
    content = '[{"question": "Q", "answer": "fever"}]'
    reply = json.dumps({"choices": [{"message": {"content": content}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    calls = []

    def flaky(url, body, headers, timeout):
        calls.append(json.loads(body)["model"])
        if len(calls) == 1:
            raise TimeoutError("timed out")
        return 200, {}, reply

    gen = PassageQAGenerator("http://x/v1", "m", backoff=0.01, transport=flaky)
    assert [r["messages"][1]["content"] for r in gen.run([("a", "fever and rest")])] == ["fever"]
    assert len(calls) == 2 and gen.summary["prompt_tokens"] == 3

    def refused(url, body, headers, timeout):
        raise ConnectionRefusedError("refused")

    down = PassageQAGenerator("http://x/v1", "m", retries=1, backoff=0.01, transport=refused)
    assert list(down.run([("a", "fever")])) == []
    assert down.summary["failed_reasons"] == {"connection error": 1}


def test_real_timeout_is_retried_then_counted():
    with FakeOpenAI(delay=lambda passage: 0.4) as server:
        gen = generator(server, timeout=0.1, retries=1, concurrency=1)
        assert list(gen.run(PASSAGES[:1])) == []
    assert gen.summary["failed_reasons"] == {"timeout": 1} and server.requests == 2


def test_wrong_endpoint_path_is_a_clear_error():
    with FakeOpenAI() as server:
        gen = PassageQAGenerator(server.url.removesuffix("/v1"), "m", backoff=0.01)
        with pytest.raises(MedtuneError, match=r"not found \(HTTP 404.*http://127.0.0.1:8000/v1"):
            list(gen.run(PASSAGES[:3]))
        assert server.requests <= gen.concurrency  # no retries


def test_other_4xx_fails_the_passage_without_retry():
    def bad_request(url, body, headers, timeout):
        return 400, {}, b'{"error": {"message": "context length exceeded"}}'

    gen = PassageQAGenerator("http://x/v1", "m", backoff=0.01, transport=bad_request)
    assert list(gen.run([("a", "fever"), ("b", "cough")])) == []
    s = gen.summary
    assert (s["requests"], s["failed"], s["failed_reasons"]) == (2, 2, {"HTTP 400": 2})
    assert gen.failures[0] == ("a", "HTTP 400: context length exceeded")
