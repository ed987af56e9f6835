"""A local fake OpenAI-compatible chat server for tests: deterministic Q&A built from the passage.

>>> with FakeOpenAI(api_key="k") as server:   # server.url == "http://127.0.0.1:<port>/v1"
...     pass

Each ``POST /v1/chat/completions`` whose user message carries ``<passage>...</passage>`` is answered
with a JSON list: one pair per passage sentence (at most three; the answer is the sentence) plus one
deliberately ungrounded pair. Knobs: fail the first N requests with 500/429 (optionally with a
``Retry-After``), return non-JSON garbage N times, wrap replies in a ```json fence, delay a reply
by a function of the passage, or answer with ``reply(passage)`` instead of Q&A. It counts requests, the most requests in flight at once, and the
token usage it reported (prompt tokens = characters of the user message, completion tokens =
characters of the reply).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASSAGE = re.compile(r"<passage>\n(.*)\n</passage>", re.DOTALL)
SENTENCE_END = re.compile(r"(?<=[。！？.!?])\s*")
UNGROUNDED = {
    "zh": ("量子纠缠能治好癌症吗？", "量子纠缠疗法可以彻底根治晚期胰腺癌。"),
    "en": ("Can quantum entanglement cure cancer?",
           "Quantum entanglement therapy completely cures late pancreatic cancer."),
}
GARBAGE = "Sure! Here are some questions about the passage: 1) What is it about?"


def is_chinese(text: str) -> bool:
    return re.search(r"[\u4e00-\u9fff]", text) is not None


def grounded_pairs(passage: str) -> list[tuple[str, str]]:
    """The pairs the server writes that the passage supports: one per sentence, at most three."""
    sentences = [s for s in SENTENCE_END.split(passage.strip()) if s][:3]
    if is_chinese(passage):
        return [(f"资料第{i}句讲了什么？", s) for i, s in enumerate(sentences, 1)]
    return [(f"What does sentence {i} of the passage say?", s) for i, s in enumerate(sentences, 1)]


def reply_pairs(passage: str) -> list[tuple[str, str]]:
    """Everything the server answers for ``passage``: the grounded pairs and one ungrounded."""
    return [*grounded_pairs(passage), UNGROUNDED["zh" if is_chinese(passage) else "en"]]


class FakeOpenAI:
    """The server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, api_key: str | None = None, fail_first: int = 0, fail_status: int = 500,
                 retry_after: str | None = None, garbage: int = 0, fence: bool = False,
                 delay: Callable[[str], float] | None = None,
                 reply: Callable[[str], str] | None = None):
        self.reply = reply
        self.api_key, self.fail_first, self.fail_status = api_key, fail_first, fail_status
        self.retry_after, self.garbage, self.fence, self.delay = retry_after, garbage, fence, delay
        self.requests = self.in_flight = self.max_in_flight = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.passages: list[str] = []  # passages of the requests answered with 200, in order
        self.lock = threading.Lock()
        self.server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        # A short poll interval makes stop() return at once instead of after up to 0.5 s.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def answer(self, headers, body: dict) -> tuple[int, dict, dict]:
        """``(status, extra headers, JSON body)`` for one request; counts it."""
        with self.lock:
            self.requests += 1
            number = self.requests
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {}, {"error": {"message": "Incorrect API key provided", "code": 401}}
        if number <= self.fail_first:
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return self.fail_status, extra, {"error": {"message": "try again later"}}
        return 200, {}, self.respond(body)

    def respond(self, body: dict) -> dict:
        """The body of a 200 reply; subclasses answer other prompts (see fake_judge.py)."""
        user = body["messages"][-1]["content"]
        passage = PASSAGE.search(user).group(1)
        if self.delay is not None:
            time.sleep(self.delay(passage))
        return self.completion(user, passage)

    def take_garbage(self) -> bool:
        """True for the next ``garbage`` replies: answer GARBAGE instead."""
        with self.lock:
            garbage, self.garbage = self.garbage > 0, max(self.garbage - 1, 0)
        return garbage

    def completion(self, user: str, passage: str) -> dict:
        if self.take_garbage():
            content = GARBAGE
        elif self.reply is not None:
            content = self.reply(passage)
        else:
            pairs = [{"question": q, "answer": a} for q, a in reply_pairs(passage)]
            content = json.dumps(pairs, ensure_ascii=False)
            content = f"```json\n{content}\n```" if self.fence else content
        with self.lock:
            self.passages.append(passage)
        return self.chat_body(user, content)

    def chat_body(self, user: str, content: str) -> dict:
        """A chat.completion body carrying ``content``; counts its token usage."""
        usage = {"prompt_tokens": len(user), "completion_tokens": len(content)}
        with self.lock:
            self.prompt_tokens += usage["prompt_tokens"]
            self.completion_tokens += usage["completion_tokens"]
        message = {"role": "assistant", "content": content}
        return {"object": "chat.completion", "choices": [{"index": 0, "message": message,
                                                          "finish_reason": "stop"}],
                "usage": {**usage, "total_tokens": sum(usage.values())}}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that timed out has gone away; writing the late reply fails, as it should.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _handler(fake: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                return self.send(404, {}, {"error": {"message": f"no route {self.path}"}})
            with fake.lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                self.send(*fake.answer(self.headers, body))
            finally:
                with fake.lock:
                    fake.in_flight -= 1

        def send(self, status: int, headers: dict, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep test output quiet
            pass

    return Handler
