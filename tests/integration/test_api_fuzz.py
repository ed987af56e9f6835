"""The API under hostile input, on a real server on 127.0.0.1: a seeded fuzz loop (no 5xx, no dropped
connection, /health still answers), the values that used to give a 500 each a named 400, a bug
answered as a JSON 500 on a kept connection, and generation cancelled for a client that gave up or
ran past the request timeout. The counts: ``PYTHONPATH=src:. python bench/api_fuzz_counts.py``."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.helpers.api_fuzz import fuzz_limits, run_fuzz
from tests.helpers.fake_engines import FakeEngine
from tests.helpers.servers import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_dir):
    from medtune.inference.engines import HFEngine
    from medtune.serving.api import create_app

    engine = HFEngine.load(tiny_dir, name="tiny", device="cpu")
    with Server(create_app(engine, limits=fuzz_limits())) as srv:
        yield srv


def test_fuzz_loop_gives_no_5xx_and_keeps_the_server_up(server):
    counts = run_fuzz(server.url, cases=300, seed=0)
    assert counts.cases == 300
    assert not counts.server_errors, "\n".join(counts.server_errors[:5])
    assert not counts.resets, "\n".join(counts.resets[:5])
    assert counts.health_after
    assert counts.statuses[200] > 20 and counts.statuses[400] > 50  # it reached generation and the checks


def chat(**extra) -> str:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    text = json.dumps(body)[:-1]
    return text + "".join(f", {json.dumps(k)}: {v}" for k, v in extra.items()) + "}"


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", chat(temperature="NaN"), "temperature"),
    ("/v1/chat/completions", chat(top_p="Infinity"), "top_p"),
    ("/v1/chat/completions", chat(repetition_penalty="1e999"), "repetition_penalty"),
    ("/v1/chat/completions", chat(repetition_penalty="1e-300"), "repetition_penalty"),
    ("/v1/chat/completions", chat(seed=str(2**70)), "seed"),
    ("/v1/chat/completions", chat(seed="1" + "0" * 5000), "seed"),
    ("/v1/chat/completions", chat(max_tokens=str(-(2**80))), "max_tokens"),
    ("/v1/chat/completions", chat(thinking_budget="-1"), "thinking_budget"),
    ("/v1/chat/completions", chat(stop='["' + "x" * 300 + '"]'), "stop"),
    ("/v1/chat/completions", chat(messages='[{"role": "user", "content": "\\ud800"}]'), "messages.0.content"),
    ("/v1/chat/completions", chat(user="[" * 40 + "]" * 40), "user.0.0.0"),
    ("/v1/chat/completions", "[" * 10_000 + "]" * 10_000, None),
    ("/v1/completions", '{"model": "tiny", "prompt": ""}', "prompt"),
    ("/v1/completions", '{"model": "tiny", "prompt": ["a", ""]}', "prompt"),
    ("/v1/completions", '{"model": "tiny", "prompt": ' + str(["a"] * 65).replace("'", '"') + "}", "prompt"),
])
def test_values_that_used_to_give_500_are_named_400s(server, path, body, param):
    r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["param"] or "").startswith(param or ""), r.text


def test_empty_message_content_is_answered(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": ""}], "max_tokens": 2}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


class SlowEngine(FakeEngine):
    """Generates until its rows are cancelled (or 30 s pass); ``broken`` raises instead (a bug)."""

    def __init__(self, broken: bool = False):
        self.broken, self.started, self.cancelled = broken, threading.Event(), threading.Event()

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        if self.broken:
            raise RuntimeError("a bug")
        self.started.set()
        deadline = time.time() + 30
        while time.time() < deadline and not all(e.is_set() for e in cancel or []):
            time.sleep(0.02)
        if all(e.is_set() for e in cancel or []):
            self.cancelled.set()
        return [Completion("late", 3, 1, "cancelled") for _ in prompts for _ in range(params.n)]


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_a_bug_is_a_json_500_and_the_connection_is_kept():
    from medtune.serving.api import create_app

    with Server(create_app(SlowEngine(broken=True))) as srv, httpx.Client(timeout=10) as http:
        for _ in range(3):  # before: the connection was dropped and the next request failed with ReadError
            r = http.post(srv.url + "/v1/chat/completions", json=BODY)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert http.get(srv.url + "/health").json()["status"] == "ok"


def test_a_plain_request_whose_client_gave_up_stops_its_generation():
    from medtune.serving.api import create_app

    engine = SlowEngine()
    with Server(create_app(engine)) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/chat/completions", json=BODY, timeout=1.0)
        assert engine.started.is_set()
        assert engine.cancelled.wait(5)  # not the 30 s the engine would otherwise run
        assert httpx.get(srv.url + "/health", timeout=5).json()["pending"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_timeout_answers_504_and_stops_generating(stream):
    from medtune.serving.api import ServerLimits, create_app

    engine = SlowEngine()
    with Server(create_app(engine, limits=ServerLimits(request_timeout=0.5))) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json=BODY | {"stream": stream}, timeout=10)
        error = (json.loads(r.text.split("data: ")[-1]) if stream else r.json())["error"]
        assert (r.status_code, error["code"]) == ((200 if stream else 504), "timeout")
        assert engine.cancelled.wait(5)


def test_an_empty_api_key_is_refused_at_start():
    from medtune.errors import MedtuneError
    from medtune.serving.api import create_app

    for key in ("", "  "):
        with pytest.raises(MedtuneError, match="empty"):
            create_app(SlowEngine(), api_key=key)
