"""The safety policy reads the whole conversation through the API: an emergency or a suicide
mentioned in an earlier user turn still acts on a later, harmless-looking question (plain and
streamed), the audit names the turn that matched, and an ordinary multi-turn conversation is left
alone. The model is a stand-in (FakeEngine) that records whether it was called."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.fake_engines import FakeEngine
from tests.helpers.servers import Server


class CountingEngine(FakeEngine):
    """Replies ``model answer`` (in two streamed pieces) and counts its calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        self.calls += 1
        out = []
        for row in range(len(prompts) * params.n):
            if on_text:
                on_text(row, "model ", None)
                on_text(row, "answer", "stop")
            out.append(Completion("model answer", 3, 2, "stop"))
        return out


def talk(*turns):
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def reply(srv, messages, stream: bool) -> str:
    body = {"model": "m", "messages": messages, "stream": stream}
    resp = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    if not stream:
        return resp.json()["choices"][0]["message"]["content"]
    chunks = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.mark.parametrize("stream", [False, True])
def test_an_earlier_turn_is_caught_and_an_ordinary_conversation_is_not(tmp_path, stream):
    from medtune.inference.policy import load_policy
    from medtune.inference.service import build_service
    from medtune.serving.api import create_app

    policy, log, engine = load_policy("default"), tmp_path / "audit.jsonl", CountingEngine()
    chest = talk("I have crushing chest pain and I'm sweating", "Please sit down.", "what should I take?")
    crisis = [{"role": "system", "content": "You are a doctor."},
              {"role": "user", "content": [{"type": "text", "text": "我不想活了"}]},  # content parts count too
              {"role": "assistant", "content": "……"}, {"role": "user", "content": "算了，失眠吃什么好？"}]
    ordinary = talk("高血压有哪些典型症状？", "头痛、头晕。", "饮食要注意什么？", "少盐。", "可以喝咖啡吗？")
    with Server(create_app(engine, service=build_service("default", log, {"model": "m"}))) as srv:
        shown = [reply(srv, m, stream) for m in (chest, crisis, ordinary)]
    triage = policy.check(chest[0]["content"]).prefix
    assert shown[0] == triage + "model answer"                           # advice before the model's answer
    assert shown[1] == policy.check("我不想活了").fixed_reply            # the crisis message, in Chinese
    assert shown[2] == "model answer" and engine.calls == 2              # the crisis turn never reached the model
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [[(a["category"], a["turn"], a["by"]) for a in r["actions"]] for r in records] == [
        [("emergency", 0, "rule")], [("self_harm", 1, "rule")], []]
    assert records[1]["request"][1]["content"] == "我不想活了"           # the turn the index names
