"""``data generate passage`` against ``medtune serve api``: the whole HTTP path, key and usage."""

from __future__ import annotations

import json

import pytest

from medtune.errors import MedtuneError
from tests.helpers.fake_engines import FakeEngine
from tests.helpers.fake_openai import grounded_pairs, reply_pairs
from tests.helpers.servers import Server
from tests.unit.test_passage_qa import PASSAGES, expected_records

pytestmark = pytest.mark.slow


class ScriptedEngine(FakeEngine):
    """An engine that answers like a good teacher model: the passage's Q&A pairs as JSON."""

    name = "teacher"

    def __init__(self):
        self.prompts = []

    def encode_chat(self, messages, model=None, enable_thinking=None):
        self.prompts.append(messages[-1]["content"])
        return [len(self.prompts) - 1]  # one "token": which prompt this is

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        out = []
        for (index,) in prompts:
            passage = next(t for _, t in PASSAGES if t in self.prompts[index])
            reply = json.dumps([{"question": q, "answer": a} for q, a in reply_pairs(passage)], ensure_ascii=False)
            out.append(Completion(reply, 1, len(reply), "stop"))
        return out


def generator(url, **kw):
    from medtune.data.generate.passage_qa import PassageQAGenerator

    return PassageQAGenerator(url + "/v1", kw.pop("model", "teacher"), backoff=0.01, timeout=120, **kw)


def test_passages_through_medtune_serve_api_become_grounded_records():
    from medtune.serving.api import create_app

    with Server(create_app(ScriptedEngine(), api_key="k")) as srv:
        gen = generator(srv.url, api_key="k", concurrency=3)
        records = list(gen.run(PASSAGES))
    assert records == expected_records(PASSAGES)
    s = gen.summary
    assert s["requests"] == len(PASSAGES) and s["failed"] == 0
    assert s["pairs_kept"] == sum(len(grounded_pairs(t)) for _, t in PASSAGES)
    assert s["ungrounded"] == len(PASSAGES)
    assert s["completion_tokens"] == sum(len(json.dumps([{"question": q, "answer": a} for q, a in reply_pairs(t)],
                                                        ensure_ascii=False)) for _, t in PASSAGES)


def test_wrong_key_and_unknown_model_stop_at_once():
    from medtune.serving.api import create_app

    with Server(create_app(ScriptedEngine(), api_key="k")) as srv:
        with pytest.raises(MedtuneError, match="API key"):
            list(generator(srv.url, api_key="bad", retries=3).run(PASSAGES[:1]))
        with pytest.raises(MedtuneError, match="404"):
            list(generator(srv.url, api_key="k", model="gpt-9").run(PASSAGES[:1]))


def test_a_real_tiny_model_behind_the_api_is_counted_not_crashed(varied_dir, tmp_path):
    from medtune.inference.engines import HFEngine
    from medtune.serving.api import create_app

    engine = HFEngine.load(varied_dir, device="cpu", name="tiny")
    with Server(create_app(engine)) as srv:
        gen = generator(srv.url, model="tiny", retries=1, concurrency=2, cache_dir=tmp_path)
        records = list(gen.run(PASSAGES[:2]))
    s = gen.summary
    assert records == [] and s["failed"] == 2 and s["requests"] == 4  # random weights never write JSON
    assert set(s["failed_reasons"]) <= {"unparsable reply"}
