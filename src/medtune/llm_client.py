"""A client for batch jobs against an OpenAI-compatible ``/chat/completions`` endpoint.

>>> strip_fence('```json\\n{"a": 1}\\n```')
'{"a": 1}'
>>> strip_fence('Sure: {"a": 1}')
'Sure: {"a": 1}'

With a server at http://127.0.0.1:8000/v1 (``vllm serve``, ``medtune serve api``, OpenAI, ...)::

    client = ChatClient("http://127.0.0.1:8000/v1", "qwen", cache_dir=Path("runs/llm-cache"))
    reply = client.complete([{"role": "user", "content": "用JSON回答：1+1=?"}], parse=json.loads)
    print(client.usage)   # requests, cache_hits, prompt/completion tokens paid, saved_tokens

One client is shared by every job that asks an LLM for structured replies (``data generate
passage``, ``eval judge``): retries with exponential backoff and jitter on connection errors,
timeouts, HTTP 429/5xx and replies the caller's ``parse`` rejects (``Retry-After`` honoured);
HTTP 401/403/404 stop the whole run with a one-line :class:`MedtuneError`; every parsed reply is
cached on disk as it arrives, so a rerun pays only for what is missing;
:meth:`ChatClient.map_ordered` runs work on threads and yields results in input order.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import threading
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from medtune.errors import MedtuneError
from medtune.files import atomic_write_text

__all__ = ["ChatClient", "RequestFailed", "Stopped", "UnparsableReply", "reply_json", "strip_fence",
           "urllib_transport"]

# transport(url, body, headers, timeout) -> (status, response headers, body); raises OSError
# (TimeoutError included) when no HTTP reply arrives.
Transport = Callable[[str, bytes, dict, float], "tuple[int, Mapping[str, str], bytes]"]

_FENCE = re.compile(r"\A```[a-zA-Z]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)
_MAX_RETRY_AFTER = 300.0  # a server asking for longer is waited on no more than this
_MISS = object()


class UnparsableReply(ValueError):
    """A reply that is not what the prompt asked for; ``parse`` functions raise it."""


class _Transient(Exception):
    """A failure worth retrying: ``reason`` is the short category counted in summaries."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None,
                 reply: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retry_after, self.reply = reason, detail, retry_after, reply


class RequestFailed(_Transient):
    """A request given up on (retries spent, or a request the server will never accept).

    ``reason`` is the category ("unparsable reply", "timeout", "HTTP 500", ...), ``detail`` the
    last error and ``reply`` the last unparsable reply text, if any.
    """


class Stopped(Exception):
    """The run was closed early (or another worker hit a fatal error): no more requests."""


def strip_fence(text: str) -> str:
    """``text`` stripped, or the inside of a ```-fenced block when the fence is the whole text."""
    text = text.strip()
    fenced = _FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


def reply_json(content: str, expected: type, **loads_kwargs):
    """The JSON value of a reply (a ```json fence is tolerated) when it is of type ``expected``
    (list or dict); raises UnparsableReply saying what is wrong."""
    try:
        value = json.loads(strip_fence(content), **loads_kwargs)
    except json.JSONDecodeError as e:
        raise UnparsableReply(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(value, expected):
        kind = {list: "list", dict: "object"}[expected]
        raise UnparsableReply(f"expected a JSON {kind}, got {type(value).__name__}")
    return value


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


class ChatClient:
    """Asks an OpenAI-compatible endpoint for replies that a ``parse`` function accepts.

    :meth:`complete` returns ``parse(reply)``; a reply ``parse`` rejects with
    :class:`UnparsableReply` is asked again, like connection errors, timeouts and HTTP 429/5xx,
    ``retries`` times with exponential backoff (``backoff`` seconds, doubled each time, with
    jitter); then :class:`RequestFailed` says why. A retry after an unparsable reply samples at
    ``retry_temperature`` when given (a greedy judge would repeat the same bad reply). HTTP
    401/403/404 raise :class:`MedtuneError` and stop every worker; other 4xx fail at once.
    Replies are cached in ``cache_dir`` only once parsed, keyed by ``cache_version``, endpoint,
    model, messages, temperature and ``cache_extra``. Call :meth:`reset` before each run.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 60.0, cache_dir: Path | None = None,
                 temperature: float = 0.7, retry_temperature: float | None = None,
                 cache_version: int = 0, cache_extra: tuple = (),
                 transport: Transport | None = None):
        if not re.match(r"https?://", endpoint):
            raise MedtuneError(f"endpoint {endpoint!r} must start with http:// or https://")
        if retries < 0:
            raise MedtuneError(f"retries must be at least 0, got {retries}")
        self.endpoint, self.model, self.api_key = endpoint.rstrip("/"), model, api_key
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature, self.retry_temperature = temperature, retry_temperature
        self.cache_version, self.cache_extra = cache_version, tuple(cache_extra)
        self._transport = transport or urllib_transport
        self.url = self.endpoint + ("" if self.endpoint.endswith("/chat/completions")
                                    else "/chat/completions")
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero the usage counts and re-arm the client after a run was closed or stopped."""
        self._counts: Counter = Counter()
        self._abort = threading.Event()
        self._fatal: MedtuneError | None = None

    @property
    def usage(self) -> dict:
        """requests (HTTP attempts sent), cache_hits, prompt/completion tokens paid and
        saved_tokens (served from the cache instead) since the last :meth:`reset`."""
        names = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "saved_tokens")
        with self._lock:
            return {name: self._counts[name] for name in names}

    def _count(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def stop(self) -> None:
        """Make workers give up: queued requests raise :class:`Stopped`, retries end."""
        self._abort.set()

    # -- one HTTP request ---------------------------------------------------------------------

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
        """Raise for a 4xx other than 429: stop the run (401/403/404) or fail the request."""
        if status in (401, 403):
            sent = "" if self.api_key else "; no API key was sent"
            what = "refused the API key" if status == 401 else "refused access"
            self._fatal = MedtuneError(
                f"{self.url}: endpoint {what} (HTTP {status}: {detail}{sent})")
        elif status == 404:
            self._fatal = MedtuneError(
                f"{self.url}: not found (HTTP 404: {detail}); check the model name and that the "
                "endpoint is the API base, e.g. http://127.0.0.1:8000/v1"
            )
        else:
            raise RequestFailed(f"HTTP {status}", detail)
        self._abort.set()
        raise self._fatal

    def _send(self, messages: list[dict], temperature: float) -> tuple[str, int]:
        """One POST; returns ``(content, tokens)`` or raises _Transient / RequestFailed / fatal."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": temperature},
                          ensure_ascii=False).encode("utf-8")
        self._count(requests=1)
        try:
            status, headers, payload = self._transport(self.url, body, self._headers(),
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

    # -- retries ------------------------------------------------------------------------------

    def _wait_before_retry(self, attempt: int, retry_after: float | None) -> None:
        # Jitter spreads the retries of concurrent workers that failed together.
        delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
        self._abort.wait(retry_after if retry_after is not None else delay)

    def _temperature(self, last: _Transient | None) -> float:
        if self.retry_temperature is None or last is None or last.reason != "unparsable reply":
            return self.temperature
        return self.retry_temperature

    def _attempt(self, messages: list[dict], parse: Callable[[str], Any], last):
        """``(parsed, content, tokens)`` of one try; raises _Transient on a retryable failure."""
        content, tokens = self._send(messages, self._temperature(last))
        try:
            return parse(content), content, tokens
        except UnparsableReply as e:
            raise _Transient("unparsable reply", str(e), reply=content) from None

    def _request(self, messages: list[dict], parse: Callable[[str], Any], key: str):
        """Parsed reply for ``messages``, retrying transient failures; caches the reply."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._wait_before_retry(attempt, last.retry_after)
            if self._abort.is_set():  # another worker hit a fatal error, or the run was closed
                raise MedtuneError(str(self._fatal)) if self._fatal else Stopped()
            try:
                parsed, content, tokens = self._attempt(messages, parse, last)
            except RequestFailed:
                raise
            except _Transient as e:
                last = e
                continue
            self._cache_write(key, content, tokens)
            return parsed
        raise RequestFailed(last.reason, last.detail, reply=last.reply)

    def complete(self, messages: list[dict], parse: Callable[[str], Any]) -> Any:
        """``parse(reply)`` for ``messages``, from the cache when there, else from the endpoint.

        Raises :class:`RequestFailed` (counted by the caller), :class:`MedtuneError` (the run
        cannot go on) or :class:`Stopped` (the run was closed).
        """
        key = self.cache_key(messages)
        parsed = self._cache_read(key, parse)
        return self._request(messages, parse, key) if parsed is _MISS else parsed

    # -- cache --------------------------------------------------------------------------------

    def cache_key(self, messages: list[dict]) -> str:
        identity = [self.cache_version, self.endpoint, self.model, messages, self.temperature,
                    *self.cache_extra]
        return hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def _cache_write(self, key: str, content: str, tokens: int) -> None:
        """Store a parsed reply (and the tokens it cost) atomically: a reader never sees half of one."""
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {"model": self.model, "content": content, "tokens": tokens}
        atomic_write_text(self._cache_path(key), json.dumps(entry, ensure_ascii=False))

    def _cache_read(self, key: str, parse: Callable[[str], Any]) -> Any:
        """``parse`` of a cached reply, or ``_MISS`` (an unreadable entry counts as a miss)."""
        if self.cache_dir is None or not self._cache_path(key).is_file():
            return _MISS
        try:
            entry = json.loads(self._cache_path(key).read_text("utf-8"))
            parsed = parse(entry["content"])
        except (OSError, ValueError, KeyError, TypeError):
            return _MISS
        self._count(cache_hits=1, saved_tokens=int(entry.get("tokens") or 0))
        return parsed

    # -- many requests ------------------------------------------------------------------------

    def map_ordered(self, work: Callable[[Any], Any], items: Iterable,
                    concurrency: int) -> Iterator[tuple[Any, Any]]:
        """``(item, work(item))`` in input order, computed on ``concurrency`` threads.

        At most ``2 * concurrency`` items are in flight, so a huge input is never all queued. An
        exception in ``work`` is raised here, when its item's turn comes. Closing early cancels
        queued items, stops retries and waits for requests in flight, whose replies are cached,
        so a rerun does not pay for them again.
        """
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="medtune-llm")
        pending: deque = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                if len(pending) >= 2 * concurrency:
                    item, future = pending.popleft()
                    yield item, future.result()
            while pending:
                item, future = pending.popleft()
                yield item, future.result()
        finally:
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
