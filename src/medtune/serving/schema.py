"""Request bodies of the OpenAI-compatible API, validated into typed objects.

Example::

    req = parse_request(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', ChatRequest)
    params = to_sampling_params(req, default_max_tokens=512)

Malformed JSON is a 400; so is JSON nested deeper than ``MAX_DEPTH``, ``NaN`` / ``Infinity`` / a
float that overflows (``1e999``), an integer beyond 64 bits and a string holding a lone surrogate
(each names its field). A body of the wrong shape or types is a 422 naming the field; a value out of
range, a list too long (``MAX_MESSAGES``, ``MAX_PROMPTS``, 4 stop strings of at most
``MAX_STOP_CHARS``), an empty completion prompt or a parameter this server does not implement
(``logprobs``, ``tools``, non-zero penalties, ...) a 400 naming the parameter. Nothing is accepted
and then ignored. Empty message content is accepted, as OpenAI accepts it. Chat requests take
``enable_thinking`` (or vLLM's ``chat_template_kwargs: {"enable_thinking": ...}``) and
``thinking_budget``, bounded like every setting by ``GenerationSettings``.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medtune.inference.settings import FIELDS, GenerationSettings, served_bounds

# Accepted because they change nothing in a reply (metadata), or because their only valid value here
# is the default: any other value is refused by ``_refuse_unsupported``.
_NEUTRAL = {"user": None, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": None,
            "top_logprobs": None, "echo": False, "best_of": None, "suffix": None, "logit_bias": None,
            "tools": None, "tool_choice": None, "response_format": None, "parallel_tool_calls": None}


MAX_DEPTH = 32  # JSON nesting: a request body needs 5 levels; 10k nested lists would overflow the parser
MAX_MESSAGES = 1024
MAX_PROMPTS = 64  # prompts in one completion request (each is a job in the queue)
MAX_STOP_CHARS = 256
_INT_RANGE = (-(2**63), 2**64 - 1)  # what a 64-bit integer holds (signed or unsigned)


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


def _setting(name: str, default=...):
    """A request field with ``GenerationSettings``' bounds for ``name`` and its default (or ``default``)."""
    return Field(FIELDS[name].default if default is ... else default, **served_bounds(name))


class TemplateKwargs(BaseModel):
    """``chat_template_kwargs`` as vLLM takes it; only ``enable_thinking`` is passed to templates here."""
    model_config = ConfigDict(extra="forbid")
    enable_thinking: bool | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str
    temperature: float = _setting("temperature", 1.0)  # OpenAI's default, not the CLI's greedy 0
    top_p: float = _setting("top_p")
    max_tokens: int | None = _setting("max_new_tokens", None)  # None: the server's default_max_tokens
    stop: str | list[str] | None = None
    n: int = _setting("n")
    seed: int | None = _setting("seed")
    stream: bool = False
    stream_options: StreamOptions | None = None
    repetition_penalty: float = _setting("repetition_penalty")  # not OpenAI's; vLLM's servers take it too
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict | None = None
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (chat) or ``max_tokens``, whichever the request set."""
        return getattr(self, "max_completion_tokens", None) or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def thinking(self) -> dict:
        """The reasoning settings of the request (chat requests only have them)."""
        return {}

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise RequestError(400, f"stop takes at most 4 non-empty strings of at most {MAX_STOP_CHARS} "
                                    "characters", "stop")
        return tuple(stops)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = _setting("max_new_tokens", None)
    enable_thinking: bool | None = _setting("enable_thinking")  # as vLLM / Qwen3's servers take it
    chat_template_kwargs: TemplateKwargs | None = None  # {"enable_thinking": bool}, vLLM's other spelling
    thinking_budget: int | None = _setting("thinking_budget")

    def thinking(self) -> dict:
        """``enable_thinking`` (from either spelling; two different values are a 400) and ``thinking_budget``."""
        spelled = self.chat_template_kwargs.enable_thinking if self.chat_template_kwargs else None
        if None not in (spelled, self.enable_thinking) and spelled != self.enable_thinking:
            raise RequestError(400, "enable_thinking and chat_template_kwargs.enable_thinking disagree",
                               "chat_template_kwargs")
        enable = self.enable_thinking if self.enable_thinking is not None else spelled
        return {"enable_thinking": enable, "thinking_budget": self.thinking_budget}

    def chat_messages(self) -> list[dict]:
        if self.messages[-1].role != "user":
            raise RequestError(400, "the last message must have role 'user'", "messages")
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a rating and/or a corrected answer for a served response."""
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(min_length=1, max_length=80)
    rating: Literal["up", "down"] | None = None
    corrected_text: str | None = Field(None, max_length=100_000)

    def model_post_init(self, _context) -> None:
        if self.rating is None and self.corrected_text is None:
            raise RequestError(400, "give a rating (up or down), a corrected_text, or both", "rating")
        if self.corrected_text is not None and not self.corrected_text.strip():
            raise RequestError(400, "corrected_text is empty", "corrected_text")


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(max_length=MAX_PROMPTS)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or not all(prompts):  # nothing to continue: refused rather than guessed (BOS?)
            raise RequestError(400, "prompt must not be empty", "prompt")
        return prompts


def parse_request(body: bytes, schema):
    """Return ``body`` validated as ``schema``; raise ``RequestError`` (400 / 422) otherwise."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise RequestError(422, "body must be a JSON object")
    try:
        req = schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        status = 400 if first["type"] in _RANGE_ERRORS else 422
        raise RequestError(status, f"{field}: {first['msg']}", field) from None
    _refuse_unsupported(req, data)
    return req


_RANGE_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than", "too_short", "too_long",
                 "string_too_long", "finite_number")


class _Refused:
    """A JSON value refused while parsing (NaN, an overflowing float, a huge integer): the walk
    that follows names its field."""

    def __init__(self, why: str):
        self.why = why


def _parse_int(text: str):
    digits = text.lstrip("-")
    if len(digits) > 20 or not _INT_RANGE[0] <= int(text) <= _INT_RANGE[1]:  # 20 digits: int() stays cheap
        return _Refused(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is beyond 64 bits")
    return int(text)


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"{text[:24]} is not a finite number")


def load_json(body: bytes):
    """Return the JSON value of ``body``; raise a 400 ``RequestError`` naming the field for what
    Python's parser takes but a request must not hold (see the module docstring)."""
    try:
        data = json.loads(body.decode("utf-8") if body else "null", parse_int=_parse_int,
                          parse_float=_parse_float, parse_constant=lambda name: _Refused(f"{name} is not a JSON number"))
    except RecursionError:
        raise RequestError(400, f"body is nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"body is not valid JSON: {exc}") from None
    _check_value(data, [], 0)
    return data


def _check_value(value, path: list, depth: int) -> None:
    """Refuse deep nesting, ``_Refused`` values and lone surrogates anywhere in ``value``."""
    where = ".".join(str(p) for p in path) or None
    if depth > MAX_DEPTH:
        raise RequestError(400, f"body is nested more than {MAX_DEPTH} levels deep", where)
    if isinstance(value, _Refused):
        raise RequestError(400, f"{where}: {value.why}", where)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(400, f"{where or 'body'}: text holds a lone UTF-16 surrogate", where) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_value(key, path, depth + 1)
            _check_value(item, [*path, key], depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, [*path, i], depth + 1)


def _refuse_unsupported(req, data: dict) -> None:
    for name, default in _NEUTRAL.items():
        if name == "user" or name not in data or data[name] in (default, None):
            continue
        if name in ("presence_penalty", "frequency_penalty") and data[name] == 0:
            continue
        raise RequestError(400, f"parameter '{name}' is not supported by this server", name,
                           "unsupported_parameter")


def to_sampling_params(req, default_max_tokens: int) -> GenerationSettings:
    """Return the ``GenerationSettings`` a validated request asks for."""
    max_tokens = req.requested_max_tokens() or default_max_tokens
    return GenerationSettings(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              repetition_penalty=req.repetition_penalty, stop=req.stops(), n=req.n,
                              seed=req.seed, **req.thinking())
