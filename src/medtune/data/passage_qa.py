"""Passages → Q&A pairs grounded in them, written by an LLM behind an OpenAI-compatible endpoint.

>>> pairs = parse_qa_pairs('[{"question": "糖尿病有哪些症状？", "answer": "多饮、多尿。"}]')
>>> pairs
[('糖尿病有哪些症状？', '多饮、多尿。')]
>>> support(pairs[0][1], set(content_units("糖尿病的典型症状为多饮、多尿、多食。")))
1.0

With a server at http://127.0.0.1:8000/v1 (e.g. ``vllm serve`` or ``medtune serve``)::

    gen = PassageQAGenerator("http://127.0.0.1:8000/v1", "qwen", cache_dir=Path("runs/qa-cache"))
    records = list(gen.run(read_passages("textbook.txt")))
    print(gen.summary)   # passages, requests, cache_hits, failed, pairs_kept, tokens ...

Ziya TCM's knowledge-guided generation: :class:`PassageQAGenerator` asks the endpoint for Q&A
pairs about each passage and keeps a pair only when :func:`support` says the passage backs its
answer. Records are unified ``messages`` records (see :mod:`medtune.data.formats`); this is
``medtune data generate passage``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from medtune.data.kg import (
    OnSkip,
    _BadRow,
    _check_lang,
    _is_jsonl,
    _json_object,
    _nonblank_lines,
    _read_text,
    _report,
)
from medtune.data.quality import detect_language
from medtune.errors import MedtuneError

__all__ = [
    "PROMPT_VERSION",
    "PassageQAGenerator",
    "UnparsableReply",
    "content_units",
    "parse_qa_pairs",
    "read_passages",
    "support",
    "urllib_transport",
]

# transport(url, body, headers, timeout) -> (status, response headers, body); raises OSError
# (TimeoutError included) when no HTTP reply arrives.
Transport = Callable[[str, bytes, dict, float], "tuple[int, Mapping[str, str], bytes]"]


# --- passages --------------------------------------------------------------------------------


def _paragraphs(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, stripped lines)`` of each run of non-blank lines."""
    start, block = 0, []
    for n, line in enumerate(lines, 1):
        if line.strip():
            start = start or n
            block.append(line.strip())
        elif block:
            yield start, block
            start, block = 0, []
    if block:
        yield start, block


def _text_passages(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)``: blank-line-separated paragraphs, or each line if none are blank."""
    blocks = list(_paragraphs(text.split("\n")))
    if len(blocks) == 1:  # no blank line anywhere: each line is a passage
        start, block = blocks[0]
        blocks = [(start + i, [line]) for i, line in enumerate(block)]
    for start, block in blocks:
        yield start, f"{path.name}:{start}", "\n".join(block)


def _jsonl_passages(path: Path, text: str, on_skip: OnSkip | None):
    """``(line, id, text)`` per JSONL row with a ``text``; ``id`` defaults to ``file:line``."""
    for line, raw in _nonblank_lines(text):
        try:
            record = _json_object(raw)
            if not isinstance(record.get("text"), str):
                raise _BadRow('field "text" missing' if "text" not in record
                              else 'field "text" must be a string')
            pid = record.get("id")
            yield line, (f"{path.name}:{line}" if pid is None else str(pid)), record["text"].strip()
        except _BadRow as e:
            _report(path, line, str(e), on_skip)


def read_passages(path, min_chars: int = 50,
                  on_skip: OnSkip | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(passage_id, text)`` from a .txt file or JSONL with ``text`` (and optional ``id``).

    Text files: blank-line-separated paragraphs (lines joined with newlines), or one passage per
    line when the file has no blank lines; ids are ``file:line`` of the passage's first line.
    Passages shorter than ``min_chars`` are skipped, reported through ``on_skip`` when given; a bad
    JSONL row raises ``file:line: ...`` or goes to ``on_skip``.
    """
    path = Path(path)
    text = _read_text(path)
    if _is_jsonl(path, text):
        rows = _jsonl_passages(path, text, on_skip)
    else:
        rows = _text_passages(path, text)
    for line, pid, body in rows:
        if len(body) >= min_chars:
            yield pid, body
        elif on_skip is not None:
            on_skip(line, f"passage shorter than {min_chars} characters")


# --- grounding -------------------------------------------------------------------------------

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[0-9a-z]+(?:['’.\-][0-9a-z]+)*")
_STOP_UNITS = frozenset({
    "的", "了", "是", "在", "和", "与", "及", "或", "等", "也", "都", "而", "其", "之",
    "a", "an", "the", "of", "and", "or", "to", "in", "on", "at", "by", "for", "with", "as", "is",
    "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "from",
})


def content_units(text: str) -> list[str]:
    """The units grounding compares: CJK characters one by one, lower-cased Latin words and
    numbers; punctuation and stop words dropped."""
    return [u for u in _UNIT.findall(text.lower()) if u not in _STOP_UNITS]


def support(answer: str, passage_units: set[str]) -> float:
    """The fraction of the answer's content units found in the passage (0.0 for no units)."""
    units = content_units(answer)
    return sum(u in passage_units for u in units) / len(units) if units else 0.0


# --- prompts and replies ---------------------------------------------------------------------

PROMPT_VERSION = 1  # part of the cache key: bump when the prompt text changes
_PROMPTS = {
    "zh": (
        "请阅读<passage>标签中的医学资料，编写{n}个问答对。\n要求：\n"
        "1. 问题是患者或医学生可能会问的自然问题；\n"
        "2. 答案只能依据资料中的内容，不要添加资料以外的信息，尽量沿用资料原文的表述；\n"
        '3. 只输出一个JSON数组，格式为[{{"question": "...", "answer": "..."}}]，'
        "不要输出其他文字。\n\n"
        "<passage>\n{passage}\n</passage>"
    ),
    "en": (
        "Read the medical text in the <passage> tags and write {n} question-answer pairs.\n"
        "Rules:\n1. Questions are natural questions a patient or medical student might ask.\n"
        "2. Answers use only information stated in the passage, preferably in its own words; add "
        "nothing from outside it.\n"
        '3. Output only a JSON array, [{{"question": "...", "answer": "..."}}], and no other text.'
        "\n\n<passage>\n{passage}\n</passage>"
    ),
}
_FENCE = re.compile(r"\A```[a-zA-Z]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)


class UnparsableReply(ValueError):
    """An LLM reply that is not the JSON list of Q&A pairs asked for."""


def parse_qa_pairs(content: str) -> list[tuple[str, str]]:
    """``[(question, answer)]`` from a reply that is a JSON list of {"question", "answer"}
    (a ```json fence is tolerated); raises UnparsableReply naming what is wrong."""
    text = content.strip()
    fenced = _FENCE.match(text)
    text = fenced.group(1).strip() if fenced else text
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnparsableReply(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(items, list):
        raise UnparsableReply(f"expected a JSON list, got {type(items).__name__}")
    pairs = []
    for i, item in enumerate(items, 1):
        for key in ("question", "answer"):
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise UnparsableReply(f'item {i} has no "{key}" string')
        pairs.append((item["question"].strip(), item["answer"].strip()))
    return pairs


# --- HTTP ------------------------------------------------------------------------------------


def urllib_transport(url: str, body: bytes, headers: dict, timeout: float):
    """POST ``body`` with the stdlib; returns ``(status, headers, body)`` for any HTTP reply."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except http.client.HTTPException as e:  # e.g. the server closed the connection mid-reply
        raise ConnectionError(f"{type(e).__name__}: {e}") from e


_MAX_RETRY_AFTER = 300.0  # a server asking for longer is waited on no more than this


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            from datetime import datetime, timezone

            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _error_detail(payload: bytes) -> str:
    """The server's error message (OpenAI ``{"error": {"message"}}``) or the body, shortened."""
    text = payload.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
        text = error.get("message", text) if isinstance(error, dict) else str(error or text)
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(text.split())[:200]


class _Transient(Exception):
    """A failure worth retrying: ``reason`` is the short category counted in the summary."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class _PassageFailed(_Transient):
    """A passage given up on (retries spent, or a request the server will never accept)."""


class _Stopped(Exception):
    """The run was closed early: a worker gives up instead of retrying."""


@dataclass
class _Outcome:
    records: list[dict]
    generated: int = 0
    ungrounded: int = 0
    failure: _PassageFailed | None = None


# --- passage → grounded Q&A ------------------------------------------------------------------


class PassageQAGenerator:
    """Writes Q&A pairs grounded in passages through an OpenAI-compatible ``/chat/completions``.

    Requests run on ``concurrency`` threads; records come out in input order. Connection errors,
    timeouts, HTTP 429/5xx and unparsable replies are retried ``retries`` times with exponential
    backoff and jitter (``Retry-After`` honoured); after that the passage is counted as failed
    with its reason (also listed in :attr:`failures`). HTTP 401/403/404 stop the run with a
    :class:`MedtuneError` since every request would fail; other 4xx fail the passage at once.
    With ``cache_dir`` every parsed reply is stored as it arrives, so a rerun pays only for what
    is missing. A pair is kept when :func:`support` of its answer is at least ``min_support``.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None,
                 questions_per_passage: int = 3, concurrency: int = 4, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 60.0, cache_dir: Path | None = None,
                 temperature: float = 0.7, lang: str = "auto", min_support: float = 0.6,
                 transport: Transport | None = None):
        if not re.match(r"https?://", endpoint):
            raise MedtuneError(f"endpoint {endpoint!r} must start with http:// or https://")
        for name, value, low in (("questions_per_passage", questions_per_passage, 1),
                                 ("concurrency", concurrency, 1), ("retries", retries, 0)):
            if value < low:
                raise MedtuneError(f"{name} must be at least {low}, got {value}")
        if not 0.0 <= min_support <= 1.0:
            raise MedtuneError(f"min_support must be between 0 and 1, got {min_support}")
        self.endpoint, self.model, self.api_key = endpoint.rstrip("/"), model, api_key
        self.questions_per_passage, self.concurrency = questions_per_passage, concurrency
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature, self.lang, self.min_support = temperature, _check_lang(lang), min_support
        self._transport = transport or urllib_transport
        self._url = self.endpoint + ("" if self.endpoint.endswith("/chat/completions")
                                     else "/chat/completions")
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._counts: Counter = Counter()
        self._failed_reasons: Counter = Counter()
        self.failures: list[tuple[str, str]] = []  # (passage_id, "reason: detail")
        self._abort = threading.Event()
        self._fatal: MedtuneError | None = None

    @property
    def summary(self) -> dict:
        """Counts for the last :meth:`run`: passages (finished), requests (HTTP attempts sent),
        cache_hits, failed + failed_reasons, pairs_generated/kept, ungrounded, and tokens:
        prompt/completion tokens paid, saved_tokens served from the cache instead."""
        names = ("passages", "requests", "cache_hits", "failed", "pairs_generated", "pairs_kept",
                 "ungrounded", "prompt_tokens", "completion_tokens", "saved_tokens")
        with self._lock:
            out = {name: self._counts[name] for name in names}
            out["failed_reasons"] = dict(self._failed_reasons)
        return out

    def _count(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    # -- one request --------------------------------------------------------------------------

    def _prompt(self, text: str) -> list[dict]:
        lang = self.lang if self.lang != "auto" else detect_language(text)
        template = _PROMPTS["zh" if lang == "zh" else "en"]
        return [{"role": "user", "content": template.format(n=self.questions_per_passage,
                                                            passage=text)}]

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _reply(self, payload: bytes) -> tuple[str, int]:
        """``(content, tokens)`` of a 200 reply; its token usage is counted as paid."""
        try:
            body = json.loads(payload)
            usage = body.get("usage") or {}
            prompt, completion = (int(usage.get(k) or 0) for k in ("prompt_tokens",
                                                                     "completion_tokens"))
            self._count(prompt_tokens=prompt, completion_tokens=completion)
            content = body["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise _Transient("malformed response", f"{type(e).__name__}: {e}") from None
        if not isinstance(content, str):
            raise _Transient("malformed response", "message content is not a string")
        return content, prompt + completion

    def _refuse(self, status: int, detail: str) -> None:
        """Raise for a 4xx other than 429: stop the run (401/403/404) or fail the passage."""
        if status in (401, 403):
            sent = "" if self.api_key else "; no API key was sent"
            what = "refused the API key" if status == 401 else "refused access"
            self._fatal = MedtuneError(
                f"{self._url}: endpoint {what} (HTTP {status}: {detail}{sent})")
        elif status == 404:
            self._fatal = MedtuneError(
                f"{self._url}: not found (HTTP 404: {detail}); check the model name and that the "
                "endpoint is the API base, e.g. http://127.0.0.1:8000/v1"
            )
        else:
            raise _PassageFailed(f"HTTP {status}", detail)
        self._abort.set()
        raise self._fatal

    def _send(self, messages: list[dict]) -> tuple[str, int]:
        """One POST; returns ``(content, tokens)`` or raises _Transient / _PassageFailed / fatal."""
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": self.temperature}, ensure_ascii=False).encode("utf-8")
        self._count(requests=1)
        try:
            status, headers, payload = self._transport(self._url, body, self._headers(),
                                                       self.timeout)
        except OSError as e:
            timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None),
                                                                  TimeoutError)
            raise _Transient("timeout" if timed_out else "connection error", str(e)) from None
        if 200 <= status < 300:
            return self._reply(payload)
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", _error_detail(payload), _retry_after(headers))
        self._refuse(status, _error_detail(payload))

    def _wait_before_retry(self, attempt: int, retry_after: float | None) -> None:
        # Jitter spreads the retries of concurrent workers that failed together.
        delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
        self._abort.wait(retry_after if retry_after is not None else delay)

    def _request_pairs(self, messages: list[dict], key: str) -> list[tuple[str, str]]:
        """Parsed pairs for ``messages``, retrying transient failures; caches the reply."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._wait_before_retry(attempt, last.retry_after)
            if self._abort.is_set():  # another worker hit a fatal error, or the run was closed
                raise MedtuneError(str(self._fatal)) if self._fatal else _Stopped()
            try:
                content, tokens = self._send(messages)
                pairs = parse_qa_pairs(content)
            except _PassageFailed:
                raise
            except _Transient as e:
                last = e
                continue
            except UnparsableReply as e:
                last = _Transient("unparsable reply", str(e))
                continue
            self._cache_write(key, content, tokens)
            return pairs
        raise _PassageFailed(last.reason, last.detail)

    # -- cache --------------------------------------------------------------------------------

    def _cache_key(self, messages: list[dict]) -> str:
        identity = [PROMPT_VERSION, self.endpoint, self.model, messages, self.temperature,
                    self.questions_per_passage]
        return hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _cache_write(self, key: str, content: str, tokens: int) -> None:
        """Store a parsed reply (and the tokens it cost) atomically: tmp file, then rename."""
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {"model": self.model, "content": content, "tokens": tokens}
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(tmp, self._cache_path(key))

    def _cache_read(self, key: str) -> list[tuple[str, str]] | None:
        """Pairs from a cached reply, or None on a miss (an unreadable entry counts as a miss)."""
        if self.cache_dir is None or not self._cache_path(key).is_file():
            return None
        try:
            entry = json.loads(self._cache_path(key).read_text("utf-8"))
            pairs = parse_qa_pairs(entry["content"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._count(cache_hits=1, saved_tokens=int(entry.get("tokens") or 0))
        return pairs

    # -- one passage --------------------------------------------------------------------------

    def _grounded(self, passage_id: str, text: str, pairs: list[tuple[str, str]]) -> _Outcome:
        """Records for the pairs whose answer the passage supports."""
        passage_units = set(content_units(text))
        records = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "source": "passage", "passage_id": passage_id}
            for q, a in pairs if support(a, passage_units) >= self.min_support
        ]
        return _Outcome(records, generated=len(pairs), ungrounded=len(pairs) - len(records))

    def _process(self, passage_id: str, text: str) -> _Outcome:
        """The outcome of one passage (runs on a worker thread)."""
        messages = self._prompt(text)
        key = self._cache_key(messages)
        pairs = self._cache_read(key)
        if pairs is None:
            try:
                pairs = self._request_pairs(messages, key)
            except _PassageFailed as e:
                return _Outcome([], failure=e)
        return self._grounded(passage_id, text, pairs)

    def _outcomes(self, passages: Iterable[tuple[str, str]]) -> Iterator[tuple[str, _Outcome]]:
        """``(passage_id, outcome)`` in input order, computed ``concurrency`` at a time.

        At most ``2 * concurrency`` passages are in flight, so a huge input is never all queued.
        Closing early cancels queued passages, stops retries and waits for requests in flight,
        whose replies are cached, so a rerun does not pay for them again.
        """
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="medtune-qa")
        pending: deque = deque()
        try:
            for passage_id, text in passages:
                pending.append((passage_id, pool.submit(self._process, passage_id, text)))
                if len(pending) >= 2 * self.concurrency:
                    passage_id, future = pending.popleft()
                    yield passage_id, future.result()
            while pending:
                passage_id, future = pending.popleft()
                yield passage_id, future.result()
        finally:
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _tally(self, passage_id: str, outcome: _Outcome) -> None:
        self._count(passages=1, pairs_generated=outcome.generated, ungrounded=outcome.ungrounded,
                    pairs_kept=len(outcome.records), failed=int(outcome.failure is not None))
        if outcome.failure is not None:
            with self._lock:
                self._failed_reasons[outcome.failure.reason] += 1
                self.failures.append((passage_id, str(outcome.failure)))

    def run(self, passages: Iterable[tuple[str, str]],
            progress: Callable[[str], None] | None = None) -> Iterator[dict]:
        """Yield ``messages`` records (``source`` "passage", ``passage_id``) in input order.

        ``passages`` are ``(passage_id, text)`` pairs (see :func:`read_passages`);
        ``progress(passage_id)`` is called once per finished passage. Counts for this run are in
        :attr:`summary` and failed passages in :attr:`failures` once the iterator is exhausted.
        """
        self._reset()
        for passage_id, outcome in self._outcomes(passages):
            self._tally(passage_id, outcome)
            yield from outcome.records
            if progress is not None:
                progress(passage_id)
