"""Reasoning through the OpenAI-compatible API: the trace as ``reasoning_content``, the answer as
``content`` (plain and streamed, tags split across stream deltas, a DeepSeek-R1 prompt that opens
the block), ``enable_thinking`` in both spellings, and ``thinking_budget``.

The tiny model is scripted (tests/helpers/scripted.py): it emits a fixed token sequence (the last
token repeats), so the trace and the answer are known exactly."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.scripted import Scripted
from tests.helpers.servers import Server

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Is 55 too low?"}]


@pytest.fixture(scope="module")
def qwen3(tiny_dir):
    from medtune.serving.api import create_app

    bot = Scripted(tiny_dir, "qwen3")
    srv = Server(create_app(bot.engine))
    bot.url = srv.url
    yield bot
    srv.stop()


@pytest.fixture(scope="module")
def client(qwen3):
    from openai import OpenAI

    return OpenAI(base_url=qwen3.url + "/v1", api_key="none", max_retries=0)


def ask(client, max_tokens=12, **kwargs):
    return client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=max_tokens, temperature=0,
                                          **kwargs)


def streamed(client, **kwargs) -> list:
    """``(kind, text)`` per delta of a streamed reply (kind: reasoning_content | content)."""
    out = []
    for chunk in ask(client, stream=True, **kwargs):
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning = (delta.model_extra or {}).get("reasoning_content")
            assert not (reasoning and delta.content)  # a delta is one or the other
            out += [("reasoning_content", reasoning)] if reasoning else []
            out += [("content", delta.content)] if delta.content else []
    return out


def joined(deltas, kind) -> str:
    return "".join(t for k, t in deltas if k == kind)


def test_a_think_block_becomes_reasoning_content_plain_and_streamed(qwen3, client):
    # The tags arrive in pieces ("<thi" + "nk>", "</" + "think>"): deltas hold a partial tag back.
    qwen3.script = qwen3.ids("<thi", "nk>\n", [qwen3.fever] * 3, "\n</", "think>\n\n", [qwen3.rest])
    assert len(qwen3.ids("<thi", "nk>\n")) > 2 and len(qwen3.ids("\n</", "think>\n\n")) > 2
    msg = ask(client, max_tokens=40).choices[0].message
    trace, answer = qwen3.text([qwen3.fever] * 3), msg.content
    assert msg.reasoning_content == trace and answer == qwen3.text([qwen3.rest]) * (40 - len(qwen3.script) + 1)
    deltas = streamed(client, max_tokens=40)
    kinds = [k for k, _ in deltas]
    assert kinds == sorted(kinds, key=lambda k: k == "content") and kinds.count("content") > 1  # trace first
    assert joined(deltas, "reasoning_content") == trace and joined(deltas, "content") == answer
    assert not any("think>" in t or t.endswith("<") for _, t in deltas)


def test_a_reply_without_a_trace_has_no_reasoning_key(qwen3):
    qwen3.script = [qwen3.rest]
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 4, "temperature": 0}
    reply = httpx.post(qwen3.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": qwen3.text([qwen3.rest] * 4)}
    with httpx.stream("POST", qwen3.url + "/v1/chat/completions", json=body | {"stream": True}, timeout=60) as r:
        text = "".join(r.iter_text())
    assert "reasoning_content" not in text and text.count('"content"') == 5  # the role chunk + 4 tokens


def test_an_unclosed_trace_is_all_reasoning(qwen3, client):
    qwen3.script = qwen3.ids("<think>\n", [qwen3.fever])
    msg = ask(client, max_tokens=6).choices[0].message
    assert msg.reasoning_content == qwen3.text([qwen3.fever] * 4) and msg.content == ""
    deltas = streamed(client, max_tokens=6)
    assert {k for k, _ in deltas} == {"reasoning_content"} and joined(deltas, "reasoning_content") == msg.reasoning_content


@pytest.mark.parametrize("budget", [0, 3])
def test_thinking_budget_through_the_api(qwen3, client, budget):
    qwen3.script = qwen3.ids("<think>", [qwen3.fever])  # thinks forever unless the budget closes the block
    msg = ask(client, max_tokens=budget + 10, extra_body={"thinking_budget": budget}).choices[0].message
    closing = qwen3.ids("\n</think>\n\n")
    assert msg.reasoning_content == qwen3.text([qwen3.fever] * budget)
    assert msg.content == qwen3.text([qwen3.fever] * (10 - 1 - len(closing)))
    deltas = streamed(client, max_tokens=budget + 10, extra_body={"thinking_budget": budget})
    assert (joined(deltas, "reasoning_content"), joined(deltas, "content")) == (msg.reasoning_content, msg.content)


def test_enable_thinking_in_either_spelling_reaches_the_template(qwen3, client):
    qwen3.script = [qwen3.rest]
    off = len(qwen3.engine.encode_chat(QUESTION, enable_thinking=False))
    default = ask(client, max_tokens=2).usage.prompt_tokens
    assert default == len(qwen3.engine.encode_chat(QUESTION)) < off  # off: an empty think block in the prompt
    assert ask(client, max_tokens=2, extra_body={"enable_thinking": False}).usage.prompt_tokens == off
    spelled = {"chat_template_kwargs": {"enable_thinking": False}}
    assert ask(client, max_tokens=2, extra_body=spelled).usage.prompt_tokens == off
    agreeing = {"enable_thinking": False, **spelled}
    assert ask(client, max_tokens=2, extra_body=agreeing).usage.prompt_tokens == off


@pytest.mark.parametrize("extra,status,param", [
    ({"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}}, 400, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"tools_in_prompt": True}}, 422, "chat_template_kwargs.tools_in_prompt"),
    ({"thinking_budget": -1}, 400, "thinking_budget"),
    ({"thinking_budget": "long"}, 422, "thinking_budget"),
    ({"enable_thinking": "maybe"}, 422, "enable_thinking"),
])
def test_bad_reasoning_settings_are_refused(qwen3, extra, status, param):
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 2, **extra}
    r = httpx.post(qwen3.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_completions_take_no_reasoning_settings(qwen3):
    body = {"model": "tiny", "prompt": "fever", "max_tokens": 2, "thinking_budget": 2}
    r = httpx.post(qwen3.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 422 and r.json()["error"]["param"] == "thinking_budget"


def test_a_prompt_that_opens_the_block_starts_in_the_trace(tiny_dir):
    """DeepSeek-R1's generation prompt ends with "<think>\\n": the reply starts inside the trace."""
    from openai import OpenAI

    from medtune.serving.api import create_app

    bot = Scripted(tiny_dir, "deepseek-r1")
    assert bot.engine.opens_thinking(bot.engine.encode_chat(QUESTION))
    bot.script = bot.ids([bot.fever] * 2, "\n</", "think>\n\n", [bot.rest])
    with Server(create_app(bot.engine)) as srv:
        client = OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        msg = ask(client).choices[0].message
        assert msg.reasoning_content == bot.text([bot.fever] * 2)
        assert msg.content == bot.text([bot.rest]) * (12 - len(bot.script) + 1)
        deltas = streamed(client)
        assert (joined(deltas, "reasoning_content"), joined(deltas, "content")) == (msg.reasoning_content, msg.content)
