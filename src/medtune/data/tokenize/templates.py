"""Built-in chat templates: one Jinja file per model family, matching its published prompt format.

The templates live in ``medtune/assets/templates/<name>.jinja`` and are written for transformers'
``tokenizer.apply_chat_template``: they take ``messages`` (``{"role", "content"}`` dicts, an
optional system message first), ``add_generation_prompt``, ``bos_token`` and ``eos_token``, and
wrap every learned span (a reply and its end-of-turn marker) in ``{% generation %}`` blocks, so
``return_assistant_tokens_mask=True`` marks exactly the tokens to train on. The comment at the top
of each file names the source of its format and any choice made where the source is silent.
"""

from __future__ import annotations

import re
from functools import cache

from medtune.errors import MedtuneError, did_you_mean

TEMPLATE_NAMES: tuple[str, ...] = (
    "chatml",
    "qwen",
    "qwen3",
    "deepseek-r1",
    "llama2",
    "llama3",
    "llama3.0",
    "chatglm",
    "chatglm2",
    "chatglm3",
    "alpaca",
    "vicuna",
    "baichuan2",
    "huatuo",
    "glm4",
    "gemma",
    "mistral",
    "phi3",
    "phi4",
    "yi",
)

# End-of-turn markers other than the tokenizer's eos: generation must stop at these.
_STOP_STRINGS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_end|>",),
    "qwen": ("<|im_end|>",),
    "qwen3": ("<|im_end|>",),
    "llama3": ("<|eot_id|>",),
    "llama3.0": ("<|eot_id|>",),
    "chatglm3": ("<|user|>", "<|observation|>"),
    "glm4": ("<|user|>", "<|observation|>"),
    "gemma": ("<end_of_turn>",),
    "phi3": ("<|end|>",),
    "phi4": ("<|im_end|>",),
    "yi": ("<|im_end|>",),
}

# Control strings the template writes that a tokenizer must hold as single special tokens.
# Left out on purpose: bos/eos (the tokenizer's own, passed in as bos_token/eos_token), Llama 2's
# "[INST]"/"<<SYS>>" (plain text in Llama 2's own tokenizer), and ChatGLM2/3's "sop": as an added
# token it would also match inside ordinary words ("esophagus"), and ChatGLM's own tokenizers
# already have it.
_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "qwen": ("<|im_start|>", "<|im_end|>"),
    "qwen3": ("<|im_start|>", "<|im_end|>"),
    "deepseek-r1": ("<｜User｜>", "<｜Assistant｜>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "llama3.0": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatglm": ("[gMASK]", "<sop>"),
    "chatglm2": ("[gMASK]",),
    "chatglm3": ("[gMASK]", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    "baichuan2": ("<reserved_106>", "<reserved_107>"),
    "glm4": ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "mistral": ("[INST]", "[/INST]"),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "phi4": ("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
    "yi": ("<|im_start|>", "<|im_end|>"),
}


def _check(name: str) -> str:
    if name not in TEMPLATE_NAMES:
        raise MedtuneError(f"unknown template '{name}'" + did_you_mean(name, TEMPLATE_NAMES))
    return name


@cache
def template_source(name: str) -> str:
    """Return the Jinja text of the built-in template ``name``."""
    from importlib.resources import files

    _check(name)
    path = files("medtune").joinpath("assets", "templates", f"{name}.jinja")
    return path.read_text(encoding="utf-8")


def stop_strings(name: str) -> list[str]:
    """Return the end-of-turn markers generation must stop at (``[]``: eos alone ends a reply)."""
    return list(_STOP_STRINGS.get(_check(name), ()))


def special_tokens(name: str) -> list[str]:
    """Return the marker strings template ``name`` needs registered as special tokens."""
    return list(_SPECIAL_TOKENS.get(_check(name), ()))


def render(source: str, messages, *, add_generation_prompt: bool = False, bos_token: str = "<s>",
           eos_token: str = "</s>") -> str:
    """Render a chat-template string exactly as ``tokenizer.apply_chat_template`` would.

    Uses transformers' own renderer (same sandbox, ``trim_blocks``/``lstrip_blocks``, and
    ``{% generation %}`` extension), after dropping ``None``-valued message keys as
    ``apply_chat_template`` does.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    rendered, _ = render_jinja_template(
        conversations=[chat],
        chat_template=source,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    return rendered[0]


def template_name(source: str | None) -> str:
    """Return the built-in name whose text is ``source``, else ``"custom"`` (``"none"`` if empty)."""
    if not source:
        return "none"
    return next((n for n in TEMPLATE_NAMES if template_source(n).strip() == source.strip()), "custom")


# Built-ins whose final reply is written as the model produces it after the serving prompt, not
# as their published template writes it: matched on prompts and past turns only (deepseek-r1: the
# '<think>\n' of its prompt; glm4: eos after the last reply; mistral: the system message in the
# user turn before the last reply).
_FINAL_TURN_REWRITTEN = frozenset({"deepseek-r1", "glm4", "mistral"})



def final_reply_rewritten(name: str) -> bool:
    """Whether built-in ``name`` writes a conversation's final reply unlike its published template
    (its prompts and past turns are the published ones)."""
    return name in _FINAL_TURN_REWRITTEN


_PROBE_TURNS = (
    {"role": "user", "content": "What causes a fever?"},
    {"role": "assistant", "content": "Usually an infection."},
    {"role": "user", "content": "  When should I see a doctor?\n"},
    {"role": "assistant", "content": "If it lasts over three days."},
)
_PROBE_SYSTEM = {"role": "system", "content": "You are a careful physician."}


def _probes():
    """``(messages, add_generation_prompt)`` pairs that show every part of a chat format."""
    turns, system = list(_PROBE_TURNS), [_PROBE_SYSTEM]
    prompts = [(turns[:1], True), (system + turns[:1], True), (turns[:3], True), (system + turns[:3], True)]
    return prompts, [(turns[:2], False), (system + turns, False)]


def _render_or_error(source, messages, add_generation_prompt, bos, eos) -> str:
    from jinja2 import TemplateError

    try:
        return render(source, messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
    except (TemplateError, TypeError, ValueError) as exc:
        return f"\0error: {exc}"


def matching_builtin(source: str | None, bos_token: str = "", eos_token: str = "") -> str | None:
    """Return the built-in that renders like ``source`` (a checkpoint's own template) on probe
    conversations (prompts with and without a system message, multi-turn history, and full
    conversations), so its generation blocks can mark the learned tokens; None if none does."""
    if not source:
        return None
    prompts, full = _probes()
    for name in TEMPLATE_NAMES:
        probes = prompts + ([] if name in _FINAL_TURN_REWRITTEN else full)
        if all(_render_or_error(source, m, g, bos_token, eos_token)
               == _render_or_error(template_source(name), m, g, bos_token, eos_token) for m, g in probes):
            return name
    return None

def control_pattern(tokenizer) -> re.Pattern | None:
    """Return a pattern matching the text of any special (control) token of ``tokenizer``, longest
    first; None when it has none."""
    texts = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    texts |= set(tokenizer.all_special_tokens)
    texts = sorted((t for t in texts if t), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in texts)) if texts else None
