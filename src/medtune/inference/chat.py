"""ChatModel: multi-turn chat over a full or adapter checkpoint, using the checkpoint's own template.

Example::

    from medtune import ChatModel
    bot = ChatModel.load("runs/demo/sft")
    reply, history = bot.chat("高血压有哪些典型症状？", history=[])
    for piece in bot.stream_chat("应该去哪个科室？", history=history):
        print(piece, end="", flush=True)

History is a list of ``{"role", "content"}`` messages (``(query, reply)`` pairs are accepted too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy (deterministic)
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def kwargs(self) -> dict:
        """Return ``generate`` keyword arguments for these settings."""
        sample = self.temperature > 0
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
               "repetition_penalty": self.repetition_penalty}
        if sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        else:
            out.update(temperature=None, top_p=None, top_k=None)
        return out


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

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        vocab, markers = tokenizer.get_vocab(), template_stop_markers(tokenizer)
        self.stop_ids = _stop_token_ids(model, tokenizer, [vocab[m] for m in markers if m in vocab])
        # Markers the tokenizer splits into several tokens are matched as text.
        self.stop_texts = [m for m in markers if m not in vocab]

    @classmethod
    def load(cls, path, adapter=None, device="auto", dtype="auto", trust_remote_code=False,
             template="auto", **settings) -> ChatModel:
        """Return a ChatModel for a full model dir, an adapter dir, or ``path`` + ``adapter``."""
        from medtune.models.load import load_model, load_tokenizer

        path = str(path)
        model = load_model(path, dtype, device, trust_remote_code)
        if adapter:
            from medtune.models.load import merge_adapter

            model = merge_adapter(model, str(adapter))
        # The adapter dir (if any) holds the tokenizer + template saved by training.
        tok_dir = str(adapter) if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else path
        tokenizer = load_tokenizer(tok_dir, template, trust_remote_code)
        return cls(model, tokenizer, GenerationSettings(**settings))

    def prompt_ids(self, messages) -> list[int]:
        """Return the token ids of ``messages`` rendered with the generation prompt."""
        from medtune.data.tokenize import apply_template

        return list(apply_template(self.tokenizer, messages, add_generation_prompt=True)["input_ids"])

    def _generate_args(self, prompts, overrides) -> dict:
        """Return ``generate`` kwargs for token-id ``prompts`` (left-padded into one batch)."""
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=ids.device)
        settings = GenerationSettings(**{**self.settings.__dict__, **overrides})
        stops = {"stop_strings": self.stop_texts, "tokenizer": self.tokenizer} if self.stop_texts else {}
        return dict(input_ids=ids, attention_mask=mask, eos_token_id=self.stop_ids, pad_token_id=pad,
                    **stops, **settings.kwargs())

    def chat(self, query: str, history=None, system: str | None = None, **overrides):
        """Return ``(reply, history)`` where history now ends with this exchange."""
        messages = _with_query(history, query, system)
        reply = self.generate_batch([self.prompt_ids(messages)], **overrides)[0]
        return reply, _drop_system(messages, system) + [{"role": "assistant", "content": reply}]

    def stream_chat(self, query: str, history=None, system: str | None = None, **overrides):
        """Yield the reply piece by piece as it is generated."""
        from threading import Thread

        from transformers import TextIteratorStreamer

        messages = _with_query(history, query, system)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        args = self._generate_args([self.prompt_ids(messages)], overrides)
        thread = Thread(target=self.model.generate, kwargs={**args, "streamer": streamer})
        thread.start()
        try:
            yield from self._trim_stream(streamer)
        finally:
            thread.join()

    def _trim_stream(self, pieces):
        """Yield ``pieces`` up to the first text end marker, holding back a possible marker start."""
        if not self.stop_texts:
            yield from (p for p in pieces if p)
            return
        held, hold = "", max(len(m) for m in self.stop_texts) - 1
        for piece in pieces:
            held += piece
            cut = self.trim(held)
            if cut != held:
                if cut:
                    yield cut
                return
            if len(held) > hold:
                yield held[: len(held) - hold]
                held = held[len(held) - hold :]
        if held:
            yield held

    def chat_batch(self, conversations, **overrides) -> list[str]:
        """Return one reply per conversation (lists of messages ending with a user turn)."""
        return self.generate_batch([self.prompt_ids(m) for m in conversations], **overrides)

    def complete_batch(self, texts, **overrides) -> list[str]:
        """Return raw continuations of plain ``texts`` (no chat template): for base models."""
        return self.generate_batch(
            [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], **overrides)

    def generate_batch(self, prompts, **overrides) -> list[str]:
        """Return the decoded continuation of each token-id prompt (left-padded batch)."""
        import torch

        args = self._generate_args(prompts, overrides)
        with torch.no_grad():
            out = self.model.generate(**args)
        width = args["input_ids"].shape[1]
        return [self._decode(row[width:]) for row in out]

    def _decode(self, ids) -> str:
        ids = [int(t) for t in ids]
        for i, t in enumerate(ids):
            if t in self.stop_ids:
                ids = ids[:i]
                break
        return self.trim(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    def trim(self, text: str) -> str:
        """Return ``text`` cut at the first end-of-turn marker matched as text."""
        for marker in self.stop_texts:
            text = text.split(marker, 1)[0]
        return text


def _with_query(history, query, system):
    messages = as_messages(history)
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}] + messages
    return messages + [{"role": "user", "content": query}]


def _drop_system(messages, system):
    return messages[1:] if system and messages and messages[0]["role"] == "system" else messages


def template_stop_markers(tokenizer) -> list[str]:
    """Return the end-of-turn markers (from the built-in templates) that this tokenizer's template writes."""
    from medtune.data.templates import TEMPLATE_NAMES, stop_strings

    source = tokenizer.chat_template or ""
    return sorted({m for name in TEMPLATE_NAMES for m in stop_strings(name) if m in source})


def _stop_token_ids(model, tokenizer, marker_ids) -> list[int]:
    """Return the ids that end a reply: generation-config eos, tokenizer eos, ``marker_ids``."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.update(marker_ids)
    return sorted(ids)
