"""``--rag`` on every frontend: the API's ``citations`` (plain and streamed), the web page's numbered
sources, ``chat``'s printed sources and ``infer``'s written ones."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from tests.conftest import write_jsonl
from tests.helpers.fake_engines import FakeEngine
from tests.helpers.servers import Server
from tests.unit.test_rag import ZH_DOCS

pytest.importorskip("bm25s")
pytestmark = pytest.mark.slow

QUESTION = "痛风的一线药物是什么？"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from medtune.inference.rag import Retriever, build_index
    from medtune.inference.service import ReplyService

    folder = tmp_path_factory.mktemp("rag")
    build_index([write_jsonl(folder / "kb.jsonl", ZH_DOCS)], folder / "index")
    return ReplyService(rag=Retriever.load(folder / "index", k=2))


class CopyEngine(FakeEngine):
    """Answers with the first numbered source of its prompt (or "no sources"), streamed in pieces."""

    def __init__(self):
        self.seen = []

    def encode_chat(self, messages, model=None, enable_thinking=None):
        self.seen.append(messages)
        return [len(self.seen) - 1]

    def generate(self, prompts, params, model=None, on_text=None, cancel=None):
        from medtune.inference.engines import Completion

        out = []
        for row, (index,) in enumerate(prompts):
            turn = self.seen[index][-1]["content"]
            text = turn.split("[1] ", 1)[1].split("\n", 1)[0] if "[1] " in turn else "no sources"
            pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
            for n, piece in enumerate(pieces):
                if on_text:
                    on_text(row, piece, "stop" if n == len(pieces) - 1 else None)
            out.append(Completion(text, 1, len(pieces), "stop"))
        return out


def _post(url, body):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_api_message_carries_citations_plain_and_streamed(service):
    from medtune.serving.api import create_app

    engine = CopyEngine()
    body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40}
    with Server(create_app(engine, service=service)) as srv:
        plain = _post(srv.url, body).json()
        lines = [ln[6:] for ln in httpx.post(srv.url + "/v1/chat/completions", json={**body, "stream": True},
                                             timeout=30).text.splitlines() if ln.startswith("data: ")]
        from openai import OpenAI

        reply = OpenAI(base_url=srv.url + "/v1", api_key="x").chat.completions.create(**body)
    message = plain["choices"][0]["message"]
    cites = message["citations"]
    assert [c["n"] for c in cites] == [1, 2] and cites[0]["doc_id"] == "gout"
    assert set(cites[0]) == {"n", "doc_id", "title", "source", "text", "score"}
    assert message["content"] == cites[0]["text"]  # the model saw the passage in its prompt
    assert engine.seen[0][-1]["content"].endswith(f"问题：{QUESTION}") and plain["id"].startswith("chatcmpl-")
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(ln) for ln in lines[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    assert [d for d in deltas if "citations" in d] == [deltas[-1]] and deltas[-1]["citations"] == cites
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and len({c["id"] for c in chunks}) == 1
    assert reply.choices[0].message.content == message["content"]  # the OpenAI client reads it as ever
    assert reply.choices[0].message.model_extra["citations"] == cites


def test_api_without_rag_has_no_citations_key_and_other_language_gets_an_empty_list(service):
    from medtune.serving.api import create_app

    body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40}
    with Server(create_app(CopyEngine())) as srv:
        assert "citations" not in _post(srv.url, body).json()["choices"][0]["message"]
    with Server(create_app(CopyEngine(), service=service)) as srv:
        english = {**body, "messages": [{"role": "user", "content": "What treats gout?"}]}
        message = _post(srv.url, english).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "no sources", "citations": []}


def test_web_reply_shows_numbered_sources_under_the_answer(service, tiny_dir, monkeypatch):
    from medtune.inference.chat import ChatModel
    from medtune.serving.webui import build_app, chat_messages, reply_messages

    bot = ChatModel.load(tiny_dir, device="cpu")
    seen = []
    encode = bot.engine.encode_chat
    monkeypatch.setattr(bot.engine, "encode_chat", lambda m, **kw: seen.append(m) or encode(m, **kw))
    steps = list(reply_messages(bot, QUESTION, [], "你是医生。", service=service, max_new_tokens=4))
    *_, answer, sources = steps[-1]
    assert sources["metadata"]["title"] == "Sources"
    lines = sources["content"]["text"].split("\n\n")
    assert lines[0].startswith("[1] **痛风** (") and lines[0].endswith(ZH_DOCS[2]["text"]) and lines[1].startswith("[2] ")
    assert all(len(step) == 1 for step in steps[:-1])  # the sources come with the finished answer
    assert seen and all(m[0]["content"] == "你是医生。" and "参考资料" in m[-1]["content"] for m in seen)
    history = [{"role": "user", "content": QUESTION}, answer, sources]
    assert chat_messages(history) == [{"role": "user", "content": QUESTION},
                                      {"role": "assistant", "content": answer["content"]["text"]}]
    assert "Sources: <code>" in build_app(bot, "tiny", service).description


class RecordingBot:
    def __init__(self):
        self.calls = []

    def stream_messages(self, messages):
        self.calls.append(messages)
        yield "答"


def test_chat_prints_sources_and_keeps_the_typed_question_in_history(service):
    from medtune.cli.commands import chat_loop

    bot, out = RecordingBot(), io.StringIO()
    chat_loop(bot, "你是医生。", io.StringIO(f"{QUESTION}\n糖尿病吃什么药？\n"), out, service)
    first, second = bot.calls  # the messages the model saw
    assert first[0] == {"role": "system", "content": "你是医生。"} and len(first) == 2
    assert first[1]["content"].startswith("参考资料：\n[1] 痛风")
    assert second[1] == {"role": "user", "content": QUESTION}  # the history keeps the question as typed
    assert "[1] 糖尿病" in second[-1]["content"]
    text = out.getvalue()
    assert text.count("Sources:\n[1] 痛风 (") == 1 and "[1] 糖尿病 (" in text


def test_infer_writes_citations_and_resumes_with_the_same_index(service, tiny_dir, tmp_path):
    from medtune.inference.batch import meta_file, run_infer
    from medtune.inference.engines import HFEngine
    from medtune.inference.settings import GenerationSettings

    engine = HFEngine.load(tiny_dir, device="cpu")
    src = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "prompt": QUESTION}, {"id": "b", "prompt": "What?"}])
    params = GenerationSettings(max_new_tokens=3, temperature=0.0)
    run_infer(engine, src, tmp_path / "a.jsonl", params, progress=False, service=service)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines())}
    assert rows["a"]["citations"][0]["doc_id"] == "gout" and rows["b"]["citations"] == []
    assert rows["a"]["prompt"] == QUESTION  # the input row as given; the sources are beside it
    meta = json.loads(meta_file(tmp_path / "a.jsonl").read_text(encoding="utf-8"))
    assert meta["rag"] == {"index": service.rag.path, "manifest_sha256": service.rag.fingerprint, "k": 2}
    again = run_infer(engine, src, tmp_path / "a.jsonl", params, progress=False, service=service)
    assert again.done_before == 2 and again.generated == 0
    from medtune.errors import MedtuneError

    with pytest.raises(MedtuneError, match="written with different rag"):
        run_infer(engine, src, tmp_path / "a.jsonl", params, progress=False)
