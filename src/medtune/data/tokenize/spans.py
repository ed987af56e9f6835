"""Learned spans of rendered conversations, for any chat template, encoded and verified.

A span is the text a model emits for one reply: what follows the serving prompt
(``add_generation_prompt=True``) up to and including the reply's end-of-turn marker. Templates
with ``{% generation %}`` blocks give the spans themselves; for any other template (a checkpoint's
own, ``template: auto``) each reply's start is where its serving prompt ends (that prompt must be
a prefix of the conversation's render) and its end is found by rendering the conversation once
more with a sentinel after every reply.

The text is then tokenized segment by segment (prompt, reply, prompt, ...), so no token straddles
a boundary: the prompt's tokens are those the server encodes, and the reply's first character is
learned even when a BPE merge would join it to the header. Every example is verified: the learned
tokens decode to exactly the spans, and each span holds its reply. Anything else is refused with
one line naming the template family and the conversation.

Example::

    from medtune.data.tokenize.spans import encode_batch
    ids, labels = encode_batch(tokenizer, [messages])[0]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medtune.errors import MedtuneError

IGNORE = -100
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")
_SENTINEL = "\ue000{}\ue001"  # private-use characters: written after each reply to find its end
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
REASONING_MODES = ("learn", "mask", "drop")
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")

# End-of-turn markers a reply may be followed by (besides the tokenizer's eos): the first one right
# after the reply (whitespace allowed before it) is learned with it.
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
               "<｜end▁of▁sentence｜>", "</s>", "<|user|>", "<|observation|>", "<eop>")

# Marker strings that identify a template family in error messages (first match wins).
_FAMILY_MARKERS = (
    ("<｜Assistant｜>", "deepseek"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|im_sep|>", "phi4"),
    ("<|im_start|>", "chatml/qwen"),
    ("[gMASK]", "glm"),
    ("<|assistant|>", "phi/zephyr"),
    ("[INST]", "mistral/llama2"),
)


@dataclass
class Conversation:
    """One conversation to encode: ``messages`` plus where it came from (for error messages)."""

    messages: list
    origin: str = ""


def template_family(source: str | None) -> str:
    """Return the built-in name ``source`` renders like, else a family guessed from its markers."""
    from medtune.data.tokenize.templates import template_name

    name = template_name(source)
    if name != "custom":
        return name
    return next((fam for marker, fam in _FAMILY_MARKERS if marker in (source or "")), "custom")


def _where(conv: Conversation, index: int) -> str:
    if conv.origin:
        return conv.origin
    first_user = next((m.get("content") for m in conv.messages if m.get("role") == "user"), "") or ""
    preview = str(first_user)[:40].replace("\n", " ")
    return f"conversation {index + 1} (user: '{preview}')"


def _refuse(tokenizer, conv: Conversation, index: int, problem: str) -> MedtuneError:
    family = template_family(tokenizer.chat_template)
    return MedtuneError(f"{_where(conv, index)}: chat template '{family}': {problem}")


# ---- reasoning traces ----------------------------------------------------------------------------

def split_reasoning(message: dict) -> tuple[str | None, str]:
    """Return ``(reasoning or None, answer)`` of an assistant message: its reasoning field, or a
    leading ``<think>…</think>`` block of its content. Raises ValueError for an unclosed block."""
    content = message.get("content") or ""
    for key in REASONING_FIELDS:
        if isinstance(message.get(key), str):
            return message[key], content
    if "</think>" in content:
        head, answer = content.split("</think>", 1)
        return head.split("<think>", 1)[-1].strip("\n"), answer.lstrip("\n")
    if "<think>" in content:
        raise ValueError("a <think> block without its closing </think>")
    return None, content


def prepare_messages(messages, mode: str, template: str) -> tuple[list[dict], list[str]]:
    """Return ``(messages for the template, answer per assistant message)`` under reasoning ``mode``.

    Traces go in the ``reasoning_content`` field when the template reads it (Qwen3, DeepSeek-R1),
    else inline as ``<think>\\n…\\n</think>\\n\\n`` before the answer; ``drop`` removes them. The
    template's own rule for past turns' traces then applies. Raises ValueError for bad input.
    """
    if mode not in REASONING_MODES:
        raise MedtuneError(f"data.reasoning '{mode}' unknown (choose from {', '.join(REASONING_MODES)})")
    reads_field = "reasoning_content" in template
    out, answers = [], []
    for message in messages:
        role = message.get("role")
        if role != "assistant":
            if any(message.get(key) is not None for key in REASONING_FIELDS):
                raise ValueError(f"a reasoning trace on a {role} turn (only assistant turns reason)")
            out.append(message)
            continue
        reasoning, answer = split_reasoning(message)
        answers.append(answer)
        clean = {k: v for k, v in message.items() if k not in REASONING_FIELDS}
        if reasoning is None or mode == "drop":
            out.append(clean | {"content": answer})
        elif reads_field:
            out.append(clean | {"content": answer, "reasoning_content": reasoning})
        else:
            out.append(clean | {"content": f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"})
    return out, answers


# ---- rendering -----------------------------------------------------------------------------------

def _render_many(tokenizer, conversations, *, add_generation_prompt=False, indices=False, **extra):
    """``(texts, generation_indices)`` for ``conversations`` (each a message list)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    return render_jinja_template(
        conversations=conversations, chat_template=tokenizer.chat_template,
        add_generation_prompt=add_generation_prompt, return_assistant_tokens_mask=indices,
        bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "", **extra,
    )


def _render_checked(tokenizer, convs: list[Conversation], messages: list[list], numbers: list[int],
                    **kwargs):
    """Render a batch; a template error names the first conversation that raises (``convs[i]``,
    number ``numbers[i]``, rendered as ``messages[i]``)."""
    from jinja2 import TemplateError

    try:
        return _render_many(tokenizer, messages, **kwargs)
    except (TemplateError, TypeError, ValueError):
        for i, one in enumerate(messages):
            try:
                _render_many(tokenizer, [one], **kwargs)
            except (TemplateError, TypeError, ValueError) as exc:
                raise _refuse(tokenizer, convs[i], numbers[i],
                              f"the template refuses it: {str(exc).splitlines()[0]}") from None
        raise


def _numbers(convs, offset: int) -> list[int]:
    return list(range(offset, offset + len(convs)))


def _end_marker(tokenizer) -> re.Pattern:
    markers = {m for m in END_MARKERS if m in (tokenizer.chat_template or "")}
    if tokenizer.eos_token:
        markers.add(tokenizer.eos_token)
    alternatives = "|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True))
    return re.compile(rf"\s*(?:{alternatives})" if alternatives else r"(?!)")


def _sentinel_spans(tokenizer, convs, messages, full, offset):
    """Char spans ``[(start, content_end, end)]`` per conversation, for templates without
    generation blocks: see the module docstring."""
    prefixes, owners = [], []
    for n, msgs in enumerate(messages):
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                prefixes.append(msgs[:i])
                owners.append(n)
    prompts = _render_checked(tokenizer, [convs[n] for n in owners], prefixes, [offset + n for n in owners],
                              add_generation_prompt=True)[0] if prefixes else []
    ends = _content_ends(tokenizer, convs, messages, full, offset)
    marker = _end_marker(tokenizer)
    spans: list[list[tuple[int, int, int]]] = [[] for _ in messages]
    for n, prompt in zip(owners, prompts):
        text, turn = full[n], len(spans[n])
        if not text.startswith(prompt):
            shown = prompt[-24:].replace("\n", "\\n")
            raise _refuse(tokenizer, convs[n], offset + n,
                          f"reply {turn + 1} does not follow its serving prompt (which ends '{shown}'): "
                          "the template writes past turns differently; set model.template to a built-in")
        content_end = ends[n][turn]
        if content_end < len(prompt):
            raise _refuse(tokenizer, convs[n], offset + n,
                          f"reply {turn + 1} ends before its serving prompt does")
        found = marker.match(text, content_end)
        spans[n].append((len(prompt), content_end, found.end() if found else content_end))
    return spans


def _content_ends(tokenizer, convs, messages, full, offset) -> list[list[int]]:
    """Where each reply's text ends in ``full``: rendered with a sentinel after each reply (and, if
    the template trims replies, after each stripped reply), which must change nothing else."""
    for strip in (False, True):
        marked = [[m | {"content": (m["content"].strip() if strip else m["content"]) + _SENTINEL.format(i)}
                   if m["role"] == "assistant" else m for i, m in enumerate(msgs)] for msgs in messages]
        texts, _ = _render_checked(tokenizer, convs, marked, _numbers(convs, offset))
        out, bad = [], None
        for n, (text, plain) in enumerate(zip(texts, full)):
            ends, removed = [], 0
            for found in _SENTINEL_RE.finditer(text):
                ends.append(found.start() - removed)
                removed += found.end() - found.start()
            if _SENTINEL_RE.sub("", text) != plain or len(ends) != sum(m["role"] == "assistant"
                                                                         for m in messages[n]):
                bad = n if bad is None else bad
            out.append(ends)
        if bad is None:
            return out
    raise _refuse(tokenizer, convs[bad], offset + bad,
                  "the template rewrites reply text (a reply's end cannot be located)")


def _generation_spans(tokenizer, convs, messages, offset):
    full, indices = _render_checked(tokenizer, convs, messages, _numbers(convs, offset), indices=True)
    return full, [[(s, None, e) for s, e in spans] for spans in indices]


# ---- encoding ------------------------------------------------------------------------------------

def encode_batch(tokenizer, conversations, *, reasoning: str = "learn", train_on_prompt: bool = False,
                 offset: int = 0) -> list[tuple[list[int], list[int]]]:
    """Return ``(input_ids, labels)`` per conversation (a message list or :class:`Conversation`).

    ``offset`` numbers the conversations in error messages. Raises a one-line MedtuneError when a
    conversation cannot be split into exactly verified learned spans.
    """
    convs = [c if isinstance(c, Conversation) else Conversation(list(c)) for c in conversations]
    source = tokenizer.chat_template or ""
    messages, answers = [], []
    for n, conv in enumerate(convs):
        try:
            msgs, ans = prepare_messages(conv.messages, reasoning, source)
        except ValueError as exc:
            raise _refuse(tokenizer, conv, offset + n, str(exc)) from None
        messages.append(msgs)
        answers.append(ans)
    if not convs:
        return []
    if GENERATION_TAG.search(source):
        full, spans = _generation_spans(tokenizer, convs, messages, offset)
    else:
        full, _ = _render_checked(tokenizer, convs, messages, _numbers(convs, offset))
        spans = _sentinel_spans(tokenizer, convs, messages, full, offset)
    learned = [_learned_ranges(tokenizer, convs[n], offset + n, full[n], spans[n], answers[n], reasoning)
               for n in range(len(convs))]
    return _encode_segments(tokenizer, convs, full, learned, train_on_prompt, offset)


def _learned_ranges(tokenizer, conv, index, text, spans, answers, reasoning):
    """Char ranges learned in ``text``; each span checked to hold its reply (the last ``len(spans)``
    replies when a template learns only some)."""
    if len(spans) > len(answers):
        raise _refuse(tokenizer, conv, index, "the template marks more learned spans than there are replies")
    ranges = []
    for (start, content_end, end), answer in zip(spans, answers[len(answers) - len(spans):]):
        body = text[start:content_end if content_end is not None else end]
        want = answer.strip()
        at = body.rfind(want) if want else len(body)
        if want and (at < 0 or (content_end is not None and body[at + len(want):].strip())):
            raise _refuse(tokenizer, conv, index,
                          f"the learned text does not hold the reply '{want[:30]}' "
                          f"(learned: '{text[start:end][:60]}')")
        if reasoning == "mask" and at > 0:
            start += at  # the trace before the answer is context, not learned
        if end > start:
            ranges.append((start, end))
    return ranges


def _encode_segments(tokenizer, convs, full, learned, train_on_prompt, offset):
    """Tokenize every prompt and reply segment on its own (one batched call) and check that the
    learned tokens decode to exactly the learned text."""
    segments, layout = [], []
    for text, ranges in zip(full, learned):
        cuts, flags, pos = [], [], 0
        for start, end in ranges:
            if start > pos:
                cuts.append(text[pos:start])
                flags.append(False)
            cuts.append(text[start:end])
            flags.append(True)
            pos = end
        if pos < len(text):
            cuts.append(text[pos:])
            flags.append(False)
        layout.append((len(segments), flags))
        segments += cuts
    encoded = tokenizer(segments, add_special_tokens=False)["input_ids"] if segments else []
    learned_ids = [encoded[first + k] for first, flags in layout for k, f in enumerate(flags) if f]
    decoded = tokenizer.batch_decode(learned_ids, skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False) if learned_ids else []
    out, seen = [], 0
    for n, ((first, flags), ranges) in enumerate(zip(layout, learned)):
        ids, labels = [], []
        for k, flag in enumerate(flags):
            piece = list(encoded[first + k])
            ids += piece
            labels += piece if flag or train_on_prompt else [IGNORE] * len(piece)
        for start, end in ranges:
            if decoded[seen] != full[n][start:end]:
                raise _refuse(tokenizer, convs[n], offset + n,
                              f"learned tokens decode to '{decoded[seen][:40]}', not the reply text "
                              f"'{full[n][start:end][:40]}' (the tokenizer does not round-trip it)")
            seen += 1
        out.append((ids, labels))
    return out
