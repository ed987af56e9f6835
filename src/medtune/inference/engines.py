"""Generation engines: one interface over Hugging Face ``generate`` and vLLM.

Example::

    from medtune.inference.backends import load_engine
    from medtune.inference.settings import GenerationSettings
    engine = load_engine("runs/sft", adapters={"tcm": "runs/tcm-lora"})
    ids = engine.encode_chat([{"role": "user", "content": "失眠怎么办？"}], model="tcm")
    [done] = engine.generate([ids], GenerationSettings(max_new_tokens=64), model="tcm")
    print(done.text, done.finish_reason, done.completion_tokens)

Every engine renders prompts with the chat template saved with the checkpoint (per adapter when an
adapter dir carries its own), stops at the template's end-of-turn tokens and at caller ``stop``
strings, generates ``n`` samples per prompt, and can stream text to a callback as it is produced.
``HFEngine`` batches prompts into one left-padded ``generate`` call; ``VLLMEngine`` (CUDA + vLLM)
hands each prompt to vLLM's continuous-batching engine.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.inference.settings import GenerationSettings

TextCallback = Callable[[int, str], None]  # (row index, new text)
SAMPLING_EPS = 1e-5  # temperatures below decode greedily, as vLLM's do (1e-300 overflows the logits)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled


@dataclass
class _Row:
    """Decoding state of one generated sequence."""
    ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the text already handed to the callback
    done: str = ""  # finish reason once finished
    text: str = ""



def load_hf_model(path, adapter=None, device="auto", dtype="auto", load_in=None,
                  trust_remote_code=False):
    """Return a transformers model for ``path`` (+ merged ``adapter``), quantized as ``load_in`` asks.

    ``load_in``: ``8bit`` / ``4bit`` (bitsandbytes, CUDA only) or ``int8-cpu`` (dynamic int8 linear
    layers on CPU).
    """
    from medtune.models.load import load_model, merge_adapter, resolve_device

    bits = {"8bit": 8, "4bit": 4}.get(load_in or "")
    if load_in not in (None, "8bit", "4bit", "int8-cpu"):
        raise MedtuneError(f"unknown --load-in '{load_in}' (8bit, 4bit or int8-cpu)")
    if load_in == "int8-cpu" and resolve_device(device) != "cpu":
        raise MedtuneError("--load-in int8-cpu runs on CPU only; pass --device cpu or use 8bit on GPU")
    if bits and not resolve_device(device).startswith("cuda"):
        raise MedtuneError(f"--load-in {load_in} (bitsandbytes) needs a CUDA GPU; this machine has none. "
                           "On CPU use --load-in int8-cpu")
    model = load_model(str(path), dtype, device, trust_remote_code, quant_bits=bits)
    if adapter:
        model = merge_adapter(model, str(adapter))
    if load_in == "int8-cpu":
        from medtune.export.quantize import quantize_dynamic_int8

        model = quantize_dynamic_int8(model)
    return model


def load_chat_tokenizer(path, adapter=None, template="auto", trust_remote_code=False):
    """Return the tokenizer whose template answers for ``path`` / ``adapter`` (adapter's own first)."""
    from medtune.models.load import load_tokenizer

    source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else path
    return load_tokenizer(str(source), template, trust_remote_code)


class ChatEngine:
    """What every engine shares: model names, per-adapter tokenizers (templates) and prompt encoding.

    ``tokenizers`` maps ``None`` (the base model) and each adapter name to the tokenizer whose
    chat template answers for it: an adapter dir's own when training saved one, else the base's.
    """

    def __init__(self, name: str, tokenizer, adapters: dict | None = None):
        self.name = name
        self.adapter_dirs = dict(adapters or {})
        self.tokenizers = {None: tokenizer}
        for key, folder in self.adapter_dirs.items():
            own = (Path(folder) / "tokenizer_config.json").is_file()
            self.tokenizers[key] = load_chat_tokenizer(folder) if own else tokenizer

    def model_names(self) -> list[str]:
        """Return the names requests can ask for: the base model first, then the adapters."""
        return [self.name, *self.adapter_dirs]

    def _key(self, model: str | None):
        if model in (None, self.name):
            return None
        if model not in self.adapter_dirs:
            raise MedtuneError(f"unknown model '{model}' (serving: {', '.join(self.model_names())})")
        return model

    def tokenizer(self, model: str | None = None):
        return self.tokenizers[self._key(model)]

    def template(self, model: str | None = None) -> str:
        return self.tokenizer(model).chat_template or ""

    def encode_chat(self, messages, model: str | None = None, enable_thinking: bool | None = None) -> list[int]:
        """Return the prompt ids of ``messages`` in the model's template, ready for the reply
        (``enable_thinking``, when given, is passed to the template as Qwen3's expects).

        Message content is text: a control token's text written in it (``<|im_start|>system``) is
        encoded as ordinary characters, never as the control token, so content cannot open a role.
        """
        from medtune.data.tokenize.examples import apply_template, render_chat
        from medtune.data.tokenize.templates import control_pattern

        tok = self.tokenizer(model)
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        controls = control_pattern(tok)
        if controls is None or not any(isinstance(m.get("content"), str) and controls.search(m["content"])
                                       for m in messages):
            return list(apply_template(tok, messages, add_generation_prompt=True, **extra)["input_ids"])
        # Render with each control text in content swapped for a placeholder, then encode the
        # template's text as usual and each swapped occurrence as plain text.
        nonce, found = uuid.uuid4().hex, []

        def hide(match) -> str:
            found.append(match.group())
            return f"\ue000{nonce}:{len(found) - 1}\ue001"

        hidden = [m | {"content": controls.sub(hide, m["content"])} if isinstance(m.get("content"), str) else m
                  for m in messages]
        text = render_chat(tok, hidden, add_generation_prompt=True, **extra)
        ids = []
        for k, piece in enumerate(re.split(f"\ue000{nonce}:(\\d+)\ue001", text)):
            if k % 2:
                ids += tok(found[int(piece)], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            elif piece:
                ids += tok(piece, add_special_tokens=False)["input_ids"]
        return ids

    def opens_thinking(self, prompt_ids, model: str | None = None) -> bool:
        """Whether ``prompt_ids`` end inside an open ``<think>`` block: the reply starts in its trace
        (DeepSeek-R1's generation prompt ends with ``<think>\\n``)."""
        from medtune.inference.reasoning import prompt_opens_thinking

        return prompt_opens_thinking(self.tokenizer(model), prompt_ids)

    def encode_text(self, text: str, model: str | None = None) -> list[int]:
        """Return the ids of plain ``text`` (no template): completion-style prompts. Control tokens'
        text in it stays text (as in ``encode_chat``): a raw prompt is a client's text, and one that
        needs the template's control tokens sends messages instead."""
        return list(self.tokenizer(model)(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])



class HFEngine(ChatEngine):
    """Batched ``transformers`` generation; several LoRA adapters can share one base model."""

    backend = "hf"

    def __init__(self, model, tokenizer, name: str = "model", adapters: dict | None = None):
        super().__init__(name, tokenizer, adapters)
        self.model = model.eval()
        self._lock = threading.Lock()  # one generate at a time on the shared weights
        if self.adapter_dirs:
            self._attach_adapters()
        self._stops = {key: stop_markers(model, tok) for key, tok in self.tokenizers.items()}

    @classmethod
    def load(cls, path, adapters=None, name=None, adapter=None, template="auto", device="auto",
             dtype="auto", load_in=None, trust_remote_code=False) -> HFEngine:
        """Return an engine for ``path`` (+ merged ``adapter``) serving named ``adapters`` too."""
        model = load_hf_model(path, adapter, device, dtype, load_in, trust_remote_code)
        tokenizer = load_chat_tokenizer(path, adapter, template, trust_remote_code)
        return cls(model, tokenizer, name or Path(str(path)).name, adapters)

    def _attach_adapters(self) -> None:
        from peft import PeftModel

        from medtune.models.load import is_adapter_dir

        for i, (name, folder) in enumerate(self.adapter_dirs.items()):
            if name == self.name or not is_adapter_dir(folder):
                raise MedtuneError(f"adapter '{name}={folder}': " + (
                    "name already used by the base model" if name == self.name
                    else "not an adapter dir (no adapter_config.json)"))
            if not (Path(folder) / "adapter_model.safetensors").is_file():
                raise MedtuneError(f"'{folder}': adapter weights must be adapter_model.safetensors")
            if i == 0:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name).eval()
            else:
                self.model.load_adapter(folder, adapter_name=name)

    def generate(self, prompts, params: GenerationSettings, model: str | None = None,
                 on_text: TextCallback | None = None, cancel=None) -> list[Completion]:
        """Return ``n`` completions per prompt (prompt-major order) from one batched ``generate``.

        ``on_text(row, delta)`` receives each row's text as it grows (row = prompt * n + sample);
        ``cancel`` is one ``threading.Event`` (or None) per prompt: a set event stops that prompt's
        rows at the next token.
        """
        key = self._key(model)
        rows = [list(p) for p in prompts for _ in range(params.n)]
        if not rows:
            return []
        events = [e for e in (cancel or [None] * len(prompts)) for _ in range(params.n)]
        tok, (stop_ids, stop_texts) = self.tokenizers[key], self._stops[key]
        tracker = _RowTracker(tok, len(rows), stop_ids, [*stop_texts, *params.stop], events, on_text)
        with self._lock, self._active(key):
            self._run(rows, params, tok, tracker)
        return [Completion(r.text, len(p), len(r.ids), r.done or "length")
                for r, p in zip(tracker.rows, rows)]

    @contextmanager
    def _active(self, key):
        """Select adapter ``key`` (None: the bare base model) for the duration of a batch."""
        if not self.adapter_dirs:
            yield
            return
        if key is None:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(key)
        yield

    def _run(self, rows, params: GenerationSettings, tok, tracker) -> None:
        import torch
        from transformers import StoppingCriteriaList

        pad = tok.pad_token_id if tok.pad_token_id is not None else tracker.stop_ids[0]
        width = max(len(r) for r in rows)
        device = self.model.device
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        sample = params.temperature >= SAMPLING_EPS
        extra = {"temperature": params.temperature, "top_p": params.top_p} if sample else \
            {"temperature": None, "top_p": None, "top_k": None}
        processors = []
        if params.thinking_budget is not None:
            from transformers import LogitsProcessorList

            from medtune.inference.reasoning import ThinkingBudget

            processors = LogitsProcessorList([ThinkingBudget(tok, params.thinking_budget, rows, width)])
        seeded = torch.random.fork_rng(devices=[]) if params.seed is not None else nullcontext()
        with seeded, torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens, do_sample=sample,
                repetition_penalty=params.repetition_penalty, eos_token_id=tracker.stop_ids,
                pad_token_id=pad, streamer=tracker, stopping_criteria=StoppingCriteriaList([tracker]),
                logits_processor=processors or None, **extra)
        tracker.finish()


class _RowTracker:
    """Streamer + stopping criterion: follows every row's tokens, text, stop markers and cancels.

    ``generate`` calls ``put`` with each step's new tokens, then the stopping criteria; a row ends
    at a stop token, at a stop string (its text is cut before it), or when its cancel event is set.
    ``on_text(row, delta, finish_reason)`` gets the text as it grows (holding back a possible
    stop-string prefix and an incomplete UTF-8 character) and, once, the row's finish reason.
    """

    def __init__(self, tokenizer, n_rows, stop_ids, stop_texts, cancel_events, on_text):
        self.tok, self.stop_ids = tokenizer, list(stop_ids)
        self.stop_texts = [s for s in stop_texts if s]
        self.hold = max((len(s) for s in self.stop_texts), default=1) - 1
        self.rows = [_Row() for _ in range(n_rows)]
        self.events, self.on_text = cancel_events, on_text
        self._prompt_seen = False

    def put(self, value) -> None:  # transformers streamer API
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if not self.rows[i].done:
                self._advance(i, int(token))

    def end(self) -> None:  # transformers streamer API
        pass

    def _advance(self, i: int, token: int) -> None:
        row = self.rows[i]
        if token in self.stop_ids:
            self._close(i, "stop")
            return
        row.ids.append(token)
        if not (self.on_text or self.stop_texts):
            return
        row.text = self.tok.decode(row.ids, skip_special_tokens=True)
        cut = _cut_at_stop(row.text, self.stop_texts)
        if cut is not None:
            row.text = cut
            self._close(i, "stop", decoded=True)
            return
        ready = len(row.text) - self.hold
        while ready > row.emitted and row.text[ready - 1] == "\ufffd":
            ready -= 1  # a multi-byte character still arriving
        self._emit(i, ready)

    def _emit(self, i: int, upto: int, finish: str | None = None) -> None:
        row = self.rows[i]
        if self.on_text and (upto > row.emitted or finish):
            self.on_text(i, row.text[row.emitted:upto], finish)
            row.emitted = max(row.emitted, upto)

    def _close(self, i: int, reason: str, decoded: bool = False) -> None:
        """End row ``i``: its final text, cut at a stop string, goes out with ``reason``."""
        row = self.rows[i]
        if not decoded:
            row.text = self.tok.decode(row.ids, skip_special_tokens=True)
            cut = _cut_at_stop(row.text, self.stop_texts)
            if cut is not None:
                row.text, reason = cut, "stop"
        row.done = reason
        self._emit(i, len(row.text), finish=reason)

    def __call__(self, input_ids, scores, **kwargs):  # transformers StoppingCriteria API
        import torch

        for i, event in enumerate(self.events):
            if not self.rows[i].done and event is not None and event.is_set():
                self._close(i, "cancelled")
        return torch.tensor([bool(r.done) for r in self.rows], device=input_ids.device)

    def finish(self) -> None:
        """Close the rows that ran out of tokens (finish reason ``length``)."""
        for i, row in enumerate(self.rows):
            if not row.done:
                self._close(i, "length")


def _cut_at_stop(text: str, stops) -> str | None:
    """Return ``text`` cut before its first stop string, or None when it holds none."""
    hits = [text.find(s) for s in stops if s in text]
    return text[: min(hits)] if hits else None


def stop_markers(model, tokenizer) -> tuple[list[int], list[str]]:
    """Return (ids, strings) that end a reply: eos ids, and the template's end-of-turn markers
    (as ids when the tokenizer holds them as one token, else as strings)."""
    from medtune.data.tokenize.templates import TEMPLATE_NAMES, stop_strings

    source = tokenizer.chat_template or ""
    markers = sorted({m for name in TEMPLATE_NAMES for m in stop_strings(name) if m in source})
    vocab = tokenizer.get_vocab()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.update(vocab[m] for m in markers if m in vocab)
    return sorted(ids), [m for m in markers if m not in vocab]
