"""ChatModel: history handling, streaming == non-streaming, batch == single, end-marker trimming."""

from __future__ import annotations

import pytest

from medtune.inference.chat import ChatModel, as_messages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bot(tiny_dir):
    return ChatModel.load(tiny_dir, device="cpu", max_new_tokens=12)


def test_chat_returns_reply_and_extended_history(bot):
    reply, history = bot.chat("高血压有哪些症状？")
    assert history == [{"role": "user", "content": "高血压有哪些症状？"},
                       {"role": "assistant", "content": reply}]
    reply2, history2 = bot.chat("要吃什么药？", history)
    assert history2[:2] == history and history2[-1]["content"] == reply2


def test_history_pairs_are_accepted():
    assert as_messages([("q", "a")]) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_stream_chat_joins_to_chat_reply(bot):
    history = [("你好", "你好，请问有什么可以帮您？")]
    reply, _ = bot.chat("感冒挂什么科？", history)
    assert "".join(bot.stream_chat("感冒挂什么科？", history)).strip() == reply


def test_chat_batch_matches_single_chats(bot):
    queries = ["感冒挂什么科？", "糖尿病有什么症状？请详细说明。"]
    batch = bot.chat_batch([[{"role": "user", "content": q}] for q in queries])
    assert batch == [bot.chat(q)[0] for q in queries]


def test_system_prompt_is_used_but_not_returned(bot):
    _, history = bot.chat("你好", system="你是医生。")
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert bot.prompt_ids([{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "你好"}]) \
        != bot.prompt_ids([{"role": "user", "content": "你好"}])


def test_generate_takes_queries_and_conversations(bot):
    q = "感冒挂什么科？"
    assert bot.generate([q, [{"role": "user", "content": q}]]) == [bot.chat(q)[0]] * 2
    assert bot.generate([q], system="你是医生。") == [bot.chat(q, system="你是医生。")[0]]


def test_stream_stops_when_the_stop_event_is_set(bot):
    import threading

    stop = threading.Event()
    sampled = dict(max_new_tokens=200, temperature=1.0, seed=0)  # the random model's greedy reply is blank
    stream = bot.stream_chat("你好", stop_event=stop, **sampled)
    first = next(stream)
    stop.set()
    rest = "".join(stream)
    full = bot.chat("你好", **sampled)[0]
    assert full.startswith((first + rest).strip()) and len(first + rest) < len(full)
