"""Request bodies of the OpenAI-compatible API, validated into typed objects.

Example::

    req = parse_request(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', ChatRequest)
    params = to_sampling_params(req, default_max_tokens=512)

Malformed JSON is a 400; a body of the wrong shape or types a 422 naming the field; a value out of
range or a parameter this server does not implement (``logprobs``, ``tools``, non-zero penalties,
...) a 400 naming the parameter. Nothing is accepted and then ignored. Chat requests take
``enable_thinking`` (or vLLM's ``chat_template_kwargs: {"enable_thinking": ...}``) and
``thinking_budget``, bounded like every setting by ``GenerationSettings``.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medtune.inference.settings import FIELDS, GenerationSettings, served_bounds

# Accepted because they change nothing in a reply (metadata), or because their only valid value here
# is the default: any other value is refused by ``_refuse_unsupported``.
_NEUTRAL = {"user": None, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": None,
            "top_logprobs": None, "echo": False, "best_of": None, "suffix": None, "logit_bias": None,
            "tools": None, "tool_choice": None, "response_format": None, "parallel_tool_calls": None}


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
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
    model_config = ConfigDict(extra="forbid")
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
        if len(stops) > 4 or not all(stops):
            raise RequestError(400, "stop takes at most 4 non-empty strings", "stop")
        return tuple(stops)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
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


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts:
            raise RequestError(400, "prompt must not be empty", "prompt")
        return prompts


def parse_request(body: bytes, schema):
    """Return ``body`` validated as ``schema``; raise ``RequestError`` (400 / 422) otherwise."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(422, "body must be a JSON object")
    try:
        req = schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        status = 400 if first["type"] in ("greater_than_equal", "less_than_equal", "greater_than",
                                          "less_than", "too_short") else 422
        raise RequestError(status, f"{field}: {first['msg']}", field) from None
    _refuse_unsupported(req, data)
    return req


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
