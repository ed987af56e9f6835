"""ReplyService: what every frontend (``chat``, ``infer``, ``serve api``, ``serve web``) does around
the model — the safety policy before it, retrieval into the prompt, and one audit record after it.

Example::

    from medtune.inference.policy import load_policy
    from medtune.inference.service import AuditLog, ReplyService

    service = ReplyService(policy=load_policy("default"), audit=AuditLog("audit.jsonl"),
                           info={"model": "runs/sft", "adapter": None, "template": "chatml"})
    prepared = service.prepare([{"role": "user", "content": "我胸口疼，一直出冷汗"}])
    if prepared.fixed_reply is None:
        reply = bot.chat_batch([prepared.messages])[0]       # the model sees prepared.messages
    shown = service.finish(prepared, reply, latency_s=1.2, surface="chat")   # prefix + reply + suffix

    for piece in service.stream(prepared, bot.stream_messages(prepared.messages), surface="web"):
        print(piece, end="")        # the prefix, the model's pieces, the suffix; audited at the end

A ``fixed_reply`` (policy action ``fixed`` or ``refuse``) is the whole answer: the frontends do not
call the model. Streams show the prefix first, then the model's deltas, then the suffix.

``rag`` is any object with ``augment(messages) -> (messages, citations)``; ``audit`` any object with
``write(record: dict)`` (the JSONL :class:`AuditLog` here, or a database sink). Each request gives one
record: ``request_id, time, surface, model, adapter, template, policy (file and sha256), actions
({category, rule, action, turn, by}: ``turn`` is the index in ``request`` of the user message
that matched), citations (doc ids), latency_s, usage, request, reply`` — the request
messages and the reply are de-identified with ``medtune.data.clean.pii`` before any sink sees them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import MedtuneError


@dataclass
class Prepared:
    request_id: str                  # "chatcmpl-..." in the API; uuid elsewhere
    messages: list[dict]             # what the model sees (after RAG context is added)
    actions: list[dict]              # policy actions: {"category", "rule", "action", "turn", "by"}
    fixed_reply: str | None = None   # policy answers without the model (action fixed / refuse)
    prefix: str = ""                 # prepended to the model's reply (triage advice)
    suffix: str = ""                 # appended (disclaimer)
    citations: list[dict] = field(default_factory=list)  # {"n", "doc_id", "title", "source", "text", "score"}
    request: list[dict] = field(default_factory=list)    # the messages as the user sent them (for the audit)

    def shown(self, reply: str) -> str:
        """Return the text the user sees for the model's ``reply``."""
        return self.fixed_reply if self.fixed_reply is not None else self.prefix + reply + self.suffix


class ReplyService:
    """The policy, retrieval and audit around one model; every part optional (None: left out)."""

    def __init__(self, policy=None, rag=None, audit=None, info: dict | None = None):
        self.policy, self.rag, self.audit = policy, rag, audit
        self.info = dict(info or {})

    def prepare(self, messages: list[dict], request_id: str | None = None) -> Prepared:
        """Return what to do with a conversation ending with a user turn: the policy's verdict on
        the conversation (:meth:`Policy.check_messages`: the last user message for every category,
        earlier ones for the persistent categories), then (unless the policy answers) the retrieval
        context."""
        request = [dict(m) for m in messages]
        prepared = Prepared(request_id or uuid.uuid4().hex, request, [], request=request)
        if self.policy is not None:
            verdict = self.policy.check_messages(messages)
            prepared.actions = verdict.actions
            prepared.fixed_reply, prepared.prefix, prepared.suffix = verdict.fixed_reply, verdict.prefix, verdict.suffix
        if prepared.fixed_reply is None and self.rag is not None:
            prepared.messages, prepared.citations = self.rag.augment([dict(m) for m in request])
        return prepared

    def finish(self, prepared: Prepared, reply: str, latency_s: float, usage: dict | None = None,
               surface: str = "api", model: str | None = None) -> str:
        """Return the text the user sees (prefix + reply + suffix; a fixed reply as is) and write one
        audit record. ``model``: the name the request asked for (the API's adapters), when not
        ``info["model"]``."""
        shown = prepared.shown(reply)
        if self.audit is not None:
            self.audit.write(self.record(prepared, shown, latency_s, usage, surface, model))
        return shown

    def stream(self, prepared: Prepared, pieces: Iterable[str] | None, surface: str,
               started: float | None = None, model: str | None = None) -> Iterator[str]:
        """Yield what the user sees piece by piece — the prefix, the model's ``pieces``, the suffix;
        a fixed reply alone (``pieces`` is then not read) — and audit the request once it ends
        (also when the consumer stops early: the record holds the reply so far)."""
        for _kind, text in self.stream_parts(prepared, pieces, surface, started, model):
            yield text

    def stream_parts(self, prepared: Prepared, pieces: Iterable[str] | None, surface: str,
                     started: float | None = None, model: str | None = None) -> Iterator[tuple[str, str]]:
        """:meth:`stream` with each piece's kind: ``("fixed" | "prefix" | "model" | "suffix", text)``."""
        started = time.perf_counter() if started is None else started
        if prepared.fixed_reply is not None:
            self.finish(prepared, "", time.perf_counter() - started, _usage(0), surface, model)
            yield "fixed", prepared.fixed_reply
            return
        got: list[str] = []
        try:
            if prepared.prefix:
                yield "prefix", prepared.prefix
            for piece in pieces or ():
                got.append(piece)
                yield "model", piece
            if prepared.suffix:
                yield "suffix", prepared.suffix
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:  # a consumer that stops early stops the model too
                close()
            self.finish(prepared, "".join(got), time.perf_counter() - started, None, surface, model)

    def record(self, prepared: Prepared, shown: str, latency_s: float, usage, surface: str,
               model: str | None = None) -> dict:
        """Return the audit record of one request, personal data replaced by placeholders."""
        from medtune.data.clean.pii import deidentify

        served = model or self.info.get("model")
        adapters = self.info.get("adapters") or {}
        return {
            "request_id": prepared.request_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "surface": surface,
            "model": served,
            "model_path": self.info.get("path", self.info.get("model")),
            "adapter": adapters.get(served, self.info.get("adapter")),
            "template": self.info.get("template"),
            "policy": self.info.get("policy"),
            "actions": prepared.actions,
            "fixed": prepared.fixed_reply is not None,
            "citations": [c.get("doc_id") for c in prepared.citations],
            "latency_s": round(float(latency_s), 4),
            "usage": usage,
            "request": [{"role": m.get("role"), "content": deidentify(str(m.get("content", "")))[0]}
                        for m in prepared.request],
            "reply": deidentify(shown)[0],
        }


def _usage(completion: int, prompt: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class AuditLog:
    """Append-only JSONL audit log: one line per request, written whole under a lock and flushed
    (line-buffered), so concurrent requests never interleave and a crash loses at most the line being
    written. The records come de-identified from :meth:`ReplyService.record`."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - held open
        except OSError as exc:
            raise MedtuneError(f"--audit-log {path}: cannot open it for appending ({exc.strerror})") from None

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def build_service(policy_spec, audit_path=None, info: dict | None = None, rag=None, audit=None) -> ReplyService:
    """Return the ReplyService the CLI flags ``--policy`` and ``--audit-log`` ask for; ``info`` gains
    the policy's file and sha256 (so the audit says which policy acted). ``audit``: a sink with
    ``write(record)`` (the serving database) used in place of a JSONL ``audit_path``."""
    from medtune.inference.policy import load_policy

    policy = load_policy(policy_spec)
    info = dict(info or {})
    info["policy"] = {"source": policy.source, "sha256": policy.sha256} if policy else None
    audit = AuditLog(audit_path) if audit_path else audit
    return ReplyService(policy=policy, rag=rag, audit=audit, info=info)
