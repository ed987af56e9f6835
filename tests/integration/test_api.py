"""OpenAI-compatible API: the official client (sync, streaming, async x64), limits, errors, auth,
adapters by name, and no request reaching the disk."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.helpers.fake_engines import FakeEngine
from tests.helpers.servers import Server

pytestmark = pytest.mark.slow

KEY = "test-key"
QUESTIONS = ["高血压有哪些典型症状？", "感冒挂什么科？", "What should I do about a fever?", "糖尿病吃什么药？"]


@pytest.fixture(scope="module")
def lora_dirs(varied_dir, tmp_path_factory):
    """Two LoRA adapters on ``varied_dir`` with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = {}
    for i, name in enumerate(["tcm", "peds"]):
        torch.manual_seed(10 + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(varied_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        out = tmp_path_factory.mktemp("lora") / name
        model.save_pretrained(out)
        dirs[name] = out
    return dirs


@pytest.fixture(scope="module")
def engine(varied_dir, lora_dirs):
    from medtune.inference.engines import HFEngine

    return HFEngine.load(varied_dir, adapters={k: str(v) for k, v in lora_dirs.items()}, name="base",
                         device="cpu")


@pytest.fixture(scope="module")
def server(engine):
    from medtune.serving.api import ServerLimits, create_app

    srv = Server(create_app(engine, api_key=KEY, limits=ServerLimits(
        max_batch=16, max_prompt_tokens=200, max_tokens=64, max_body_bytes=20_000)))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def reference(engine, question, model="base", max_tokens=12, **params):
    """What the engine alone answers (one prompt, no server)."""
    from medtune.inference.settings import GenerationSettings

    ids = engine.encode_chat([{"role": "user", "content": question}], model)
    return engine.generate([ids], GenerationSettings(max_new_tokens=max_tokens, **params), model)


def ask(client, question, model="base", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                          **{"max_tokens": 12, "temperature": 0, **kwargs})


def test_models_lists_the_base_and_every_adapter(client):
    assert [m.id for m in client.models.list().data] == ["base", "tcm", "peds"]


def test_chat_completion_equals_the_engine_and_counts_usage(client, engine):
    got = ask(client, QUESTIONS[0])
    [want] = reference(engine, QUESTIONS[0])
    assert got.choices[0].message.content == want.text and want.text.strip()
    assert got.choices[0].finish_reason == want.finish_reason == "length"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.prompt_tokens, 12)
    assert got.usage.total_tokens == want.prompt_tokens + 12


def test_streaming_joins_to_the_plain_reply_and_reports_usage(client):
    plain = ask(client, QUESTIONS[1])
    chunks = list(ask(client, QUESTIONS[1], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stop_strings_cut_the_reply(client):
    full = ask(client, QUESTIONS[2], max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    got = ask(client, QUESTIONS[2], max_tokens=24, stop=[stop])
    assert got.choices[0].message.content == full[:full.index(stop)]
    assert got.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       ask(client, QUESTIONS[2], max_tokens=24, stop=stop, stream=True) if c.choices)
    assert streamed == full[:full.index(stop)]


def test_n_and_seed_sample_reproducibly(client):
    a = ask(client, QUESTIONS[0], n=3, temperature=1.0, seed=7)
    b = ask(client, QUESTIONS[0], n=3, temperature=1.0, seed=7)
    c = ask(client, QUESTIONS[0], n=3, temperature=1.0, seed=8)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [ch.message.content for ch in b.choices] != [ch.message.content for ch in c.choices]
    assert a.usage.completion_tokens == 36


def test_completions_plain_list_and_stream(client, engine):
    from medtune.inference.settings import GenerationSettings

    got = client.completions.create(model="base", prompt=["高血压", "fever"], max_tokens=6, temperature=0)
    want = engine.generate([engine.encode_text("高血压"), engine.encode_text("fever")], GenerationSettings(max_new_tokens=6))
    assert [c.text for c in got.choices] == [w.text for w in want]
    streamed = client.completions.create(model="base", prompt="高血压", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want[0].text


def test_adapters_are_selected_by_model_name(client, engine, varied_dir, lora_dirs):
    from medtune.inference.chat import ChatModel

    replies = {m: ask(client, QUESTIONS[3], model=m).choices[0].message.content for m in ("base", "tcm", "peds")}
    assert len(set(replies.values())) == 3
    merged = ChatModel.load(varied_dir, adapter=lora_dirs["tcm"], device="cpu", max_new_tokens=12)
    assert replies["tcm"].strip() == merged.chat(QUESTIONS[3])[0]
    assert replies["base"] == ask(client, QUESTIONS[3], model="base").choices[0].message.content


def test_64_concurrent_requests_are_batched_without_mixing(server, engine):
    from openai import AsyncOpenAI

    prompts = [f"{QUESTIONS[i % 4]} 第{i}位病人" for i in range(64)]
    models = ["base", "tcm"]
    want = [reference(engine, p, models[i % 2], max_tokens=8)[0].text for i, p in enumerate(prompts)]
    assert len(set(want)) > 32
    before = len(engine_batches(server))

    async def run():
        client = AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        tasks = [client.chat.completions.create(
            model=models[i % 2], messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0,
            stream=bool(i % 3 == 0)) for i, p in enumerate(prompts)]
        results = await asyncio.gather(*tasks)
        texts = []
        for r in results:
            if hasattr(r, "choices"):
                texts.append(r.choices[0].message.content)
            else:
                texts.append("".join([c.choices[0].delta.content or "" async for c in r if c.choices]))
        await client.close()
        return texts

    assert asyncio.run(run()) == want
    assert max(engine_batches(server)[before:]) > 1  # requests really shared generate calls


def engine_batches(server):
    return server.server.config.app.state.scheduler.batches


def post(server, body, key=KEY, path="/v1/chat/completions", **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(server.url + path, content=body, headers=headers, timeout=60, **kw)
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60, **kw)


def msg(**extra):
    return {"model": "base", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4, **extra}


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    ({"model": "base"}, 422, "messages"),
    (msg(max_tokens="many"), 422, "max_tokens"),
    (msg(messages=[{"role": "doctor", "content": "x"}]), 422, "messages.0.role"),
    (msg(unknown_option=1), 422, "unknown_option"),
    (msg(temperature=3), 400, "temperature"),
    (msg(top_p=0), 400, "top_p"),
    (msg(n=0), 400, "n"),
    (msg(messages=[]), 400, "messages"),
    (msg(messages=[{"role": "assistant", "content": "hi"}]), 400, "messages"),
    (msg(max_tokens=65), 400, "max_tokens"),
    (msg(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (msg(logprobs=True), 400, "logprobs"),
    (msg(presence_penalty=0.5), 400, "presence_penalty"),
    (msg(tools=[{"type": "function"}]), 400, "tools"),
    (msg(messages=[{"role": "user", "content": "病" * 300}]), 400, "messages"),
    (msg(model="nope"), 404, "model"),
    (msg(model="../../../etc/passwd"), 404, "model"),
])
def test_bad_requests_get_openai_errors_never_500(server, body, status, param):
    r = post(server, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["param"] == param


def test_body_size_limit_is_413(server):
    r = post(server, msg(messages=[{"role": "user", "content": "x" * 30_000}]))
    assert r.status_code == 413 and "body" in r.json()["error"]["message"]


def test_prompt_token_limit_names_context_length(server):
    r = post(server, msg(messages=[{"role": "user", "content": "病" * 300}]))
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_api_key_is_required_on_v1_but_not_health(server):
    assert post(server, msg(), key=None).status_code == 401
    assert post(server, msg(), key="wrong").status_code == 401
    assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    assert post(server, msg()).status_code == 200


def test_unknown_paths_are_404_and_a_model_path_is_never_loaded(server, lora_dirs):
    assert httpx.get(server.url + "/etc/passwd", timeout=10).status_code == 404
    r = post(server, msg(model=str(lora_dirs["tcm"])))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


class BlockingEngine(FakeEngine):
    """An engine whose generate waits for ``release``: fills the queue for the 429 test."""

    def __init__(self):
        self.release, self.started = threading.Event(), threading.Event()

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        self.started.set()
        self.release.wait(30)
        return [Completion("ok", 3, 1, "stop") for _ in prompts for _ in range(params.n)]


def test_full_queue_answers_429_and_recovers():
    from medtune.serving.api import ServerLimits, create_app

    fake = BlockingEngine()
    srv = Server(create_app(fake, limits=ServerLimits(max_queue=1, max_batch=1)))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    try:
        with httpx.Client(timeout=30) as http:
            first = threading.Thread(target=lambda: http.post(srv.url + "/v1/chat/completions", json=body))
            first.start()
            assert fake.started.wait(10)  # the worker is busy with the first request
            second = threading.Thread(target=lambda: http.post(srv.url + "/v1/chat/completions", json=body))
            second.start()
            deadline = time.time() + 10
            while srv.server.config.app.state.scheduler.pending() < 1 and time.time() < deadline:
                time.sleep(0.02)
            r = http.post(srv.url + "/v1/chat/completions", json=body)
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            fake.release.set()
            first.join(10)
            second.join(10)
            assert http.post(srv.url + "/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == "ok"
    finally:
        fake.release.set()
        srv.stop()


def test_server_binds_loopback_by_default():
    import inspect

    from medtune.cli.main import build_parser
    from medtune.serving.api import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["serve", "api", "--model", "m"])
    assert args.host == "127.0.0.1"
