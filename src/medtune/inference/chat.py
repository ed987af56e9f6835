"""ChatModel: multi-turn chat over a full or adapter checkpoint, using the checkpoint's own template.

Example::

    from medtune import ChatModel
    bot = ChatModel.load("runs/demo/sft")
    reply, history = bot.chat("高血压有哪些典型症状？", history=[])
    for piece in bot.stream_chat("应该去哪个科室？", history=history):
        print(piece, end="", flush=True)

    replies = bot.generate(["失眠怎么办？", [{"role": "user", "content": "感冒挂什么科？"}]])

History is a list of ``{"role", "content"}`` messages (``(query, reply)`` pairs are accepted too).
Generation runs on ``medtune.inference.engines.HFEngine`` (batched, stops at the template's
end-of-turn markers); ``ChatModel`` adds conversation handling on top.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace

from medtune.inference.settings import GenerationSettings


def as_messages(history) -> list[dict]:
    """Return ``history`` as role/content messages (accepts ``(query, reply)`` pairs)."""
    messages = []
    for item in history or []:
        if isinstance(item, dict):
            messages.append({"role": item["role"], "content": item["content"]})
        else:
            query, reply = item
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": reply}]
    return messages


class ChatModel:
    """A loaded model + tokenizer whose chat template came with the checkpoint."""

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None, name: str = "model"):
        from medtune.inference.engines import HFEngine

        self.engine = HFEngine(model, tokenizer, name=name)
        self.settings = settings or GenerationSettings()

    @property
    def model(self):
        return self.engine.model

    @property
    def tokenizer(self):
        return self.engine.tokenizer()

    @classmethod
    def load(cls, path, adapter=None, device="auto", dtype="auto", trust_remote_code=False,
             template="auto", load_in=None, **settings) -> ChatModel:
        """Return a ChatModel for a full model dir, an adapter dir, or ``path`` + ``adapter``.

        ``load_in``: ``8bit`` / ``4bit`` (bitsandbytes on CUDA) or ``int8-cpu``.
        """
        from medtune.inference.engines import load_chat_tokenizer, load_hf_model

        model = load_hf_model(path, adapter, device, dtype, load_in, trust_remote_code)
        tokenizer = load_chat_tokenizer(path, adapter, template, trust_remote_code)
        return cls(model, tokenizer, GenerationSettings(**settings), name=str(adapter or path))

    def prompt_ids(self, messages, settings: GenerationSettings | None = None) -> list[int]:
        """Return the token ids of ``messages`` rendered with the generation prompt (``enable_thinking``
        from ``settings``, default: this model's)."""
        return self.engine.encode_chat(messages, enable_thinking=(settings or self.settings).enable_thinking)

    def chat(self, query: str, history=None, system: str | None = None, **overrides):
        """Return ``(reply, history)`` where history now ends with this exchange."""
        messages = _with_query(history, query, system)
        reply = self.chat_batch([messages], **overrides)[0]
        return reply, _drop_system(messages, system) + [{"role": "assistant", "content": reply}]

    def stream_chat(self, query: str, history=None, system: str | None = None, stop_event=None,
                    **overrides):
        """Yield the reply piece by piece as it is generated.

        Setting ``stop_event`` (a ``threading.Event``) ends generation at the next token; so does
        closing the generator.
        """
        return self.stream_messages(_with_query(history, query, system), stop_event, **overrides)

    def stream_messages(self, messages, stop_event=None, **overrides):
        """Yield the reply to ``messages`` (ending with a user turn) piece by piece; ``stop_event``
        as in :meth:`stream_chat`. Bad settings raise here, before the generator starts."""
        params = replace(self.settings, **overrides)
        return self._stream(self.prompt_ids(messages, params), params, stop_event)

    def _stream(self, ids, params, stop_event):
        stop_event = stop_event or threading.Event()
        pieces: queue.Queue = queue.Queue()
        first = [True]

        def on_text(_row, delta, finish):
            if first[0]:  # replies are returned stripped; match that in the stream
                delta = delta.lstrip()
                first[0] = not delta
            pieces.put(delta.rstrip() if finish else delta)

        failure: list = []

        def run():
            try:
                self.engine.generate([ids], params, on_text=on_text, cancel=[stop_event])
            except Exception as exc:  # noqa: BLE001 - handed to the caller below
                failure.append(exc)
            finally:
                pieces.put(None)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            while (piece := pieces.get()) is not None:
                if piece:
                    yield piece
        finally:
            stop_event.set()
            thread.join()
        if failure:
            raise failure[0]

    def generate(self, prompts, system: str | None = None, **overrides) -> list[str]:
        """Return one reply per prompt, generated in one batch.

        A prompt is a user query (str) or a list of messages ending with a user turn.
        """
        convs = [_with_query([], p, system) if isinstance(p, str) else with_system(p, system)
                 for p in prompts]
        return self.chat_batch(convs, **overrides)

    def chat_batch(self, conversations, **overrides) -> list[str]:
        """Return one reply per conversation (lists of messages ending with a user turn)."""
        settings = replace(self.settings, **overrides)
        return self.generate_batch([self.prompt_ids(m, settings) for m in conversations], **overrides)

    def complete_batch(self, texts, **overrides) -> list[str]:
        """Return raw continuations of plain ``texts`` (no chat template): for base models."""
        return self.generate_batch([self.engine.encode_text(t) for t in texts], **overrides)

    def generate_batch(self, prompts, **overrides) -> list[str]:
        """Return the continuation of each token-id prompt (one left-padded batch), stripped."""
        done = self.engine.generate(prompts, replace(self.settings, **overrides))
        return [c.text.strip() for c in done]


def with_system(messages, system):
    """Return ``messages`` as role/content dicts with a ``system`` turn first unless one is there."""
    messages = as_messages(messages)
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}] + messages
    return messages


def _with_query(history, query, system):
    return with_system(history, system) + [{"role": "user", "content": query}]


def _drop_system(messages, system):
    return messages[1:] if system and messages and messages[0]["role"] == "system" else messages
