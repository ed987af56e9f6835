"""OpenAI-compatible HTTP API over a medtune engine.

Example::

    medtune serve api --model runs/sft --adapter tcm=runs/tcm-lora --api-key "$KEY"

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)
    reply = client.chat.completions.create(model="tcm", messages=[{"role": "user", "content": "失眠怎么办？"}])

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` and ``POST /v1/feedback`` (plain and ``stream: true`` server-sent events ending with
``data: [DONE]``). Served with retrieval (``--rag INDEX``), a chat reply's message carries
``citations``: ``[{"n", "doc_id", "title", "source", "text", "score"}]``, the numbered passages put
into the prompt (streamed: in the delta of each choice's final chunk, the one with its
``finish_reason``); the key is absent without ``--rag``, so OpenAI clients read replies as ever. A chat reply that starts with a ``<think>`` block (or whose prompt opened one,
as DeepSeek-R1's do) comes back split as vLLM's reasoning parsers and DeepSeek's API split it:
``message.reasoning_content`` (the trace) and ``message.content`` (the answer); streamed,
``delta.reasoning_content`` chunks, then ``delta.content`` chunks. A reply without a trace has no
``reasoning_content`` key, as OpenAI's replies have none. ``enable_thinking`` (or
``chat_template_kwargs``) and ``thinking_budget`` set reasoning per request. Bad requests get OpenAI-style error JSON: 400 (bad values, unsupported
parameters, prompt too long), 401 (missing or wrong key), 404 (unknown model or path), 413 (body too
large), 422 (wrong JSON shape or types), 429 (queue full), 504 (not done within the request
timeout; its generation is cancelled). No client value gives a 5xx; a bug still answers a JSON 500
on a connection kept open (and its traceback is logged). A client that goes away (streaming or
not) has its generation cancelled at the next token. Requests only name models that were loaded at
start-up: nothing a client sends is used as a path.

Chat replies go through a ``ReplyService`` (``medtune.inference.service``): with a safety policy
(``medtune serve api`` applies the bundled one unless ``--policy none``), a request the policy
answers (``fixed`` / ``refuse``) gets that message without the model (completion tokens 0), and
the others get its triage prefix / disclaimer suffix around the answer (streamed: the prefix first,
then the deltas, then the suffix); the response id is the audit log's ``request_id``. With a policy,
``/v1/completions`` answers 400: raw continuation would get round it.

With a store (:mod:`medtune.serving.store`), every chat completion is recorded under the ``id`` the
reply carries (choice N > 0 of an ``n > 1`` request as ``ID:N``), and ``POST /v1/feedback``
``{"response_id", "rating": "up"|"down", "corrected_text"?}`` stores a rating and/or a correction
for it: 200 with the stored record, 404 (``response_not_found``) for an id never served. What is
stored is the model's own answer (without the policy's prefix / suffix); a policy's fixed reply,
which no model wrote, is not stored.

Text a client sends is text: the template's control tokens (``<|im_start|>``, ``<|im_end|>``, ...)
inside message content or a completion prompt are encoded as plain characters, never as control
token ids (see ``ChatEngine.encode_chat``), so a message cannot open a new role.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medtune.errors import MedtuneError
from medtune.inference.reasoning import TraceStream, split_reply
from medtune.serving.schema import (
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    RequestError,
    parse_request,
    to_sampling_params,
)


@dataclass
class ServerLimits:
    max_batch: int = 16
    max_queue: int = 256
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048  # largest max_tokens a request may ask for
    default_max_tokens: int = 512
    max_body_bytes: int = 1 << 20
    request_timeout: float = 600.0  # seconds from arrival to the last token (504 and cancelled after)


_log = logging.getLogger("medtune.serving")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def create_app(engine, api_key: str | None = None, limits: ServerLimits | None = None, service=None, store=None):
    """Return the FastAPI app serving ``engine`` (one batching worker thread); chat replies go
    through ``service`` (a ReplyService: safety policy, retrieval, audit; None: the model alone);
    ``store``: a :class:`~medtune.serving.store.FeedbackStore` recording the model's chat replies
    and the feedback on them (None: off)."""
    from medtune.inference.service import ReplyService
    from medtune.serving.scheduler import BatchScheduler

    if api_key is not None and not api_key.strip():
        raise MedtuneError("the API key is empty (an unset shell variable?): pass a real key, or none")
    limits = limits or ServerLimits()
    service = service or ReplyService()
    scheduler = BatchScheduler(engine, limits.max_batch, limits.max_queue)
    app = FastAPI(title="medtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.engine, app.state.started = scheduler, engine, int(time.time())
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code)

    app.add_middleware(_Guard, api_key=api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", "pending": scheduler.pending()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": app.state.started, "owned_by": "medtune"}
            for name in engine.model_names()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        req = parse_request(await _read_body(request, limits), ChatRequest)
        thinking = req.thinking()
        if thinking["thinking_budget"] is not None and engine.backend == "vllm":
            raise RequestError(400, "thinking_budget is applied by the hf backend only (this server runs vLLM)",
                               "thinking_budget", "unsupported_parameter")
        _check_model(engine, req.model)
        # off the event loop: a policy classifier or retrieval may take a while
        prepared = await asyncio.to_thread(service.prepare, req.chat_messages(), "chatcmpl-" + uuid.uuid4().hex[:24])
        prompt = _encode(engine, req.model, lambda: engine.encode_chat(
            prepared.messages, req.model, enable_thinking=thinking["enable_thinking"]))
        opened = engine.opens_thinking(prompt, req.model)
        # the model's own answers are stored (not a policy's fixed reply, which no model wrote)
        record = None if store is None or prepared.fixed_reply is not None else \
            _recorder(store, req.chat_messages(), req.model)
        return await _respond(request, scheduler, req, [prompt], limits, chat=True, opened=opened,
                              reply=_Reply(service, prepared, started), record=record)

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        req = parse_request(await _read_body(request, limits), FeedbackRequest)
        if store is None:
            raise RequestError(404, "this server stores no feedback (started with --db none)",
                               "response_id", "response_not_found")
        stored = await asyncio.to_thread(store.add_feedback, req.response_id, req.rating, req.corrected_text, "api")
        if stored is None:
            raise RequestError(404, f"response '{req.response_id}' not found (never served here, answered by "
                                    "the safety policy, or served before this database)",
                               "response_id", "response_not_found")
        return {"object": "feedback", **stored}

    @app.post("/v1/completions")
    async def completions(request: Request):
        if service.policy is not None:  # raw text continuation would get round the policy
            raise RequestError(400, "this server applies a safety policy to chat requests; /v1/completions "
                                    "(raw text continuation) is off with a policy: use /v1/chat/completions, "
                                    "or start the server with --policy none", code="policy")
        req = parse_request(await _read_body(request, limits), CompletionRequest)
        prompts = [_encode(engine, req.model, lambda t=t: engine.encode_text(t, req.model))
                   for t in req.prompts()]
        return await _respond(request, scheduler, req, prompts, limits, chat=False)

    return app


class _Guard:
    """ASGI middleware: the bearer key on ``/v1/`` paths, and any exception a handler lets out
    answered as a JSON 500 (logged with its traceback) instead of a dropped connection."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"].startswith("/v1/") and not _authorized(scope, self.api_key):
            response = JSONResponse(error_body(401, "missing or invalid API key (Authorization: Bearer KEY)",
                                               code="invalid_api_key"), 401)
            return await response(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - a bug or an engine failure, never bad input
            _log.exception("internal error on %s", scope["path"])
            if not started:
                response = JSONResponse(error_body(500, f"internal error: {type(exc).__name__}"), 500)
                await response(scope, receive, send)


def _authorized(scope, api_key: str) -> bool:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


async def _read_body(request, limits: ServerLimits) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"request body over {limits.max_body_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise RequestError(413, f"request body over {limits.max_body_bytes} bytes")
    return bytes(body)


def _check_model(engine, model: str) -> None:
    if model not in engine.model_names():
        raise RequestError(404, f"model '{model}' not found (serving: {', '.join(engine.model_names())})",
                           "model", "model_not_found")


def _encode(engine, model: str, encode) -> list[int]:
    _check_model(engine, model)
    try:
        return encode()
    except MedtuneError as exc:
        raise RequestError(400, str(exc), "messages") from None
    except Exception as exc:  # noqa: BLE001 - a chat template refusing this conversation (e.g. role order)
        raise RequestError(400, f"the model's chat template cannot render these messages: {exc}",
                           "messages") from None


def _check_limits(prompts, req, limits: ServerLimits) -> None:
    if not all(prompts):
        raise RequestError(400, "the prompt encodes to no tokens", "prompt")
    longest = max(len(p) for p in prompts)
    if longest > limits.max_prompt_tokens:
        raise RequestError(400, f"prompt is {longest} tokens; this server accepts at most "
                                f"{limits.max_prompt_tokens}", "messages", "context_length_exceeded")
    asked = req.requested_max_tokens()
    if asked is not None and asked > limits.max_tokens:
        raise RequestError(400, f"max_tokens {asked} is over this server's limit of {limits.max_tokens}",
                           "max_tokens")


@dataclass
class _Reply:
    """A chat request's ReplyService, its ``Prepared`` (policy verdict, request id) and start time."""

    service: object
    prepared: object
    started: float

    def finish(self, text: str, usage: dict | None, model: str) -> str:
        return self.service.finish(self.prepared, text, time.perf_counter() - self.started, usage, "api", model)


def _recorder(store, messages: list[dict], model: str):
    """Return ``record(response_id, replies)``: stores a chat request's replies (one per choice)."""
    def record(response_id: str, replies: list[str]) -> None:
        store.add_replies(response_id, messages, replies, model=model, surface="api")
    return record


async def _respond(request, scheduler, req, prompts, limits, chat: bool, opened: bool = False,
                   reply: _Reply | None = None, record=None):
    _check_limits(prompts, req, limits)
    params = to_sampling_params(req, limits.default_max_tokens)
    meta = _Meta(req.model, chat, opened, reply.prepared.request_id if reply else None,
                 reply.prepared.citations if reply and reply.service.rag is not None else None)
    if reply is not None and reply.prepared.fixed_reply is not None:  # the policy answers: no model
        usage = _usage(sum(len(p) for p in prompts), 0)
        reply.finish("", usage, req.model)
        if req.stream:
            return StreamingResponse(_fixed_sse(meta, req, reply.prepared.fixed_reply, params.n, usage),
                                     media_type="text/event-stream")
        return JSONResponse(meta.fixed_response(reply.prepared.fixed_reply, params.n, usage))
    deadline = time.monotonic() + limits.request_timeout
    if req.stream:
        events: asyncio.Queue = asyncio.Queue()
        jobs = _submit_all(scheduler, prompts, params, req.model, events)
        return StreamingResponse(_sse(request, jobs, events, meta, req, prompts, params.n, deadline, reply, record),
                                 media_type="text/event-stream")
    jobs = _submit_all(scheduler, prompts, params, req.model)
    try:
        results = await _results(request, jobs, deadline)
    finally:  # done, failed, timed out, or the client left: nothing more to generate for it
        for job, _ in jobs:
            job.cancel.set()
    if results is None:  # nobody is listening; 499 as nginx logs a client that closed the request
        return Response(status_code=499)
    body = meta.full_response(results, prompts)
    if record is not None:  # the model's answers, stored before the reply leaves (feedback can follow at once)
        await asyncio.to_thread(record, meta.id, [c["message"].get("content", "") for c in body["choices"]])
    if reply is not None:  # the policy's prefix and suffix around each answer; the first one audited
        messages = [c["message"] for c in body["choices"]]
        first = messages[0].get("content", "") if messages else ""
        for message in messages:
            message["content"] = reply.prepared.shown(message.get("content", ""))
        reply.finish(first, body["usage"], req.model)
    return JSONResponse(body)


DISCONNECT_POLL_S = 0.25  # how often a waiting plain request checks that its client is still there


async def _results(request, jobs, deadline: float) -> list | None:
    """Return every job's completions, or None when the client disconnects first; raise 504 past
    ``deadline`` (the caller cancels the jobs in every case)."""
    waiting = asyncio.gather(*(fut for _, fut in jobs))
    try:
        while not waiting.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestError(504, "the request took longer than this server's request timeout; "
                                        "its generation was stopped", code="timeout")
            await asyncio.wait([waiting], timeout=min(left, DISCONNECT_POLL_S))
            if not waiting.done() and await request.is_disconnected():
                waiting.cancel()
                return None
    except BaseException:
        waiting.cancel()
        raise
    return waiting.result()


@dataclass
class _Meta:
    model: str
    chat: bool
    opened: bool = False  # the chat prompt ends inside an open <think> block
    request_id: str | None = None  # the ReplyService's (chat); else a new one
    citations: list | None = None  # with retrieval: on each chat message (streamed: its final delta)

    def __post_init__(self):
        self.id = self.request_id or new_id(self.chat)
        self.created = int(time.time())
        self.object = "chat.completion" if self.chat else "text_completion"

    def choice(self, index: int, text: str | None, finish: str | None, delta: bool = False,
               reasoning: str | None = None) -> dict:
        finish = "stop" if finish == "cancelled" else finish
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {} if text is None else {"content": text}
        if reasoning is not None:
            body = {"reasoning_content": reasoning, **body}
        if self.citations is not None and (finish is not None or not delta):
            body["citations"] = self.citations
        if delta:
            return {"index": index, "delta": body, "logprobs": None, "finish_reason": finish}
        return {"index": index, "message": {"role": "assistant", **body}, "logprobs": None,
                "finish_reason": finish}

    def full_response(self, results, prompts) -> dict:
        choices, completion = [], 0
        for completions in results:
            for c in completions:
                reasoning, text = split_reply(c.text, self.opened) if self.chat else (None, c.text)
                choices.append(self.choice(len(choices), text, c.finish_reason, reasoning=reasoning))
                completion += c.completion_tokens
        prompt = sum(len(p) for p in prompts)
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, "usage": _usage(prompt, completion)}

    def fixed_response(self, text: str, n: int, usage: dict) -> dict:
        """A chat response whose ``n`` choices are the policy's fixed reply."""
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [self.choice(i, text, "stop") for i in range(n)], "usage": usage}

    def chunk(self, choices, usage=None) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def new_id(chat: bool) -> str:
    """Return a fresh response id: ``chatcmpl-…`` for chat, ``cmpl-…`` for completions."""
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _submit(scheduler, prompt, params, model, on_text=None, on_error=None):
    """Queue one prompt; return ``(job, future of its completions)`` (429 when the queue is full).

    ``on_text`` and ``on_error`` are attached before the job is queued, so no delta is missed.
    """
    from medtune.serving.scheduler import Job

    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    job = Job(prompt, params, model, on_text=on_text)

    def done():
        loop.call_soon_threadsafe(_settle, fut, job)
        if job.error is not None and on_error is not None:
            on_error(job.error)

    job.on_done = done
    if not scheduler.submit(job):
        raise RequestError(429, "server busy: too many requests waiting; retry later", code="rate_limit")
    return job, fut


def _settle(fut, job) -> None:
    if fut.done():
        return
    if job.error is not None:
        fut.set_exception(job.error)
    else:
        fut.set_result(job.result)


def _submit_all(scheduler, prompts, params, model, events: asyncio.Queue | None = None):
    """Queue every prompt, all or none (a 429 cancels those already queued).

    With ``events``, text deltas arrive there as ``(choice, delta, finish)`` and a failed job's
    exception is put there too.
    """
    loop = asyncio.get_running_loop()
    put = (lambda item: loop.call_soon_threadsafe(events.put_nowait, item)) if events is not None else None
    jobs = []
    try:
        for i, prompt in enumerate(prompts):
            on_text = None
            if put is not None:
                def on_text(sample, delta, finish, base=i * params.n):
                    put((base + sample, delta, finish))
            jobs.append(_submit(scheduler, prompt, params, model, on_text, put))
    except RequestError:
        for job, _ in jobs:
            job.cancel.set()
        raise
    return jobs


def _fixed_sse(meta: _Meta, req, text: str, n: int, usage: dict):
    """Yield the server-sent events of a policy's fixed reply: role, the text, finish, usage, ``[DONE]``."""
    yield meta.chunk([meta.choice(i, "", None, delta=True) | {"delta": {"role": "assistant", "content": ""}}
                      for i in range(n)])
    for i in range(n):
        yield meta.chunk([meta.choice(i, text, None, delta=True)])
        yield meta.chunk([meta.choice(i, None, "stop", delta=True)])
    if req.include_usage:
        yield meta.chunk([], usage=usage)
    yield "data: [DONE]\n\n"


async def _sse(request, jobs, events, meta: _Meta, req, prompts, n, deadline: float, reply: _Reply | None = None,
               record=None):
    """Yield server-sent events: deltas per choice, a final chunk per choice, usage, ``[DONE]``.

    With ``reply`` (chat), each choice's content starts with the policy's prefix and ends with its
    suffix; the first choice's answer is audited when the stream ends, however it ends. With
    ``record``, the model's answers are stored before ``[DONE]``."""
    total, finished = len(prompts) * n, 0
    traces = [TraceStream(meta.opened) for _ in range(total)]  # chat: each choice's trace split off
    prefix, suffix = (reply.prepared.prefix, reply.prepared.suffix) if reply else ("", "")
    answer, usage = [], None  # the first choice's content, for the audit
    answers = [""] * total
    try:
        if meta.chat:
            yield meta.chunk([meta.choice(i, "", None, delta=True) | {"delta": {"role": "assistant", "content": ""}}
                              for i in range(total)])
            if prefix:
                yield meta.chunk([meta.choice(i, prefix, None, delta=True) for i in range(total)])
        while finished < total:
            choice, delta, finish = await _next_event(events, deadline)
            pieces = traces[choice].feed(delta, final=bool(finish)) if meta.chat else [("content", delta)]
            for kind, text in pieces:
                answers[choice] += text if kind == "content" else ""
                if text:
                    if choice == 0 and kind == "content":
                        answer.append(text)
                    yield meta.chunk([meta.choice(choice, text, None, delta=True) if kind == "content" else
                                      meta.choice(choice, None, None, delta=True, reasoning=text)])
            if finish:
                finished += 1
                if suffix:
                    yield meta.chunk([meta.choice(choice, suffix, None, delta=True)])
                yield meta.chunk([meta.choice(choice, None if meta.chat else "", finish, delta=True)])
        if req.include_usage:
            results = [await fut for _, fut in jobs]
            completion = sum(c.completion_tokens for r in results for c in r)
            usage = _usage(sum(len(p) for p in prompts), completion)
            yield meta.chunk([], usage=usage)
        if record is not None:
            await asyncio.to_thread(record, meta.id, answers)
        yield "data: [DONE]\n\n"
    except TimeoutError:
        yield f"data: {json.dumps(error_body(504, 'the request took longer than this server allows', code='timeout'))}\n\n"
    except Exception as exc:  # noqa: BLE001 - headers are sent: report in the stream, as OpenAI does
        _log.exception("internal error while streaming")
        yield f"data: {json.dumps(error_body(500, f'internal error: {type(exc).__name__}'))}\n\n"
    finally:  # the client went away (or we are done): stop generating for it
        for job, _ in jobs:
            job.cancel.set()
        if reply is not None:
            reply.finish("".join(answer), usage, meta.model)


async def _next_event(events, deadline: float):
    """Return the next text event; raise the engine's error if a job failed, TimeoutError past ``deadline``."""
    item = await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0.001))
    if isinstance(item, BaseException):
        raise item
    return item


def serve(engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits: ServerLimits | None = None, quiet: bool = False, service=None, store=None) -> None:
    """Run the API with uvicorn until interrupted."""
    from pathlib import Path

    import uvicorn

    app = create_app(engine, api_key, limits, service, store)
    policy = getattr(service, "policy", None)
    print(f"medtune API on http://{host}:{port}/v1  models: {', '.join(engine.model_names())}"
          f"  auth: {'bearer key' if api_key else 'none'}"
          f"  safety policy: {Path(policy.source).name if policy else 'none'}"
          f"  feedback db: {store.shown if store is not None else 'none'}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info")
