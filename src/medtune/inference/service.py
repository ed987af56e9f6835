"""ReplyService: what every frontend (chat, infer, API, web) does around the model's reply.

Example::

    from medtune.inference.rag import Retriever
    from medtune.inference.service import ReplyService
    service = ReplyService(rag=Retriever.load("runs/kb-index", k=3))
    prepared = service.prepare([{"role": "user", "content": "糖尿病的一线用药是什么？"}])
    reply = bot.chat_batch([prepared.messages])[0]
    text = service.finish(prepared, reply, latency_s=0.4)
    prepared.citations  # [{"n": 1, "doc_id": "糖尿病", "title": ..., "source": ..., "text": ..., "score": ...}]

``prepare`` turns the user's conversation into what the model sees (retrieved passages added to
the last user turn, see ``inference.rag``); ``finish`` returns the text the user sees. This is the
retrieval part of the shared interface of issue 18 (the safety policy and the audit log fill in
``actions``, ``fixed_reply``, ``prefix`` / ``suffix`` and the audit record).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass
class Prepared:
    request_id: str  # "chatcmpl-..." in the API; a uuid elsewhere
    messages: list[dict]  # what the model sees (after RAG context is added)
    actions: list[dict]  # policy actions taken: {"category", "rule", "action"}
    fixed_reply: str | None = None  # policy answers without the model (action fixed / refuse)
    prefix: str = ""  # prepended to the model's reply (triage advice)
    suffix: str = ""  # appended (disclaimer)
    citations: list[dict] = field(default_factory=list)  # {"n", "doc_id", "title", "source", "text", "score"}


class ReplyService:
    """Prepares a conversation for the model and finishes its reply for the user."""

    def __init__(self, policy=None, rag=None, audit=None, info: dict | None = None):
        self.policy, self.rag, self.audit, self.info = policy, rag, audit, info or {}

    def prepare(self, messages: list[dict], request_id: str | None = None) -> Prepared:
        """Return the conversation the model is to answer: with retrieval, the top passages go into
        the last user turn and come back as ``citations``."""
        prepared = Prepared(request_id or uuid.uuid4().hex, list(messages), [])
        if prepared.fixed_reply is None and self.rag is not None:
            prepared.messages, prepared.citations = self.rag.augment(prepared.messages)
        return prepared

    def finish(self, prepared: Prepared, reply: str, latency_s: float, usage: dict | None = None,
               surface: str = "api") -> str:
        """Return the text the user sees: ``fixed_reply`` as is, else prefix + reply + suffix."""
        if prepared.fixed_reply is not None:
            return prepared.fixed_reply
        return prepared.prefix + reply + prepared.suffix
