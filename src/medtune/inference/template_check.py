"""Does a chat template train what it serves? The checks behind ``medtune template check``, also run
by ``medtune train`` on the first conversations of its data.

The training tokens before a conversation's final reply must be exactly the serving prompt (what
``ChatEngine.encode_chat`` encodes), the learned tokens must start where that prompt ends, and,
given the tokenizer's ``own`` template, the template used for training must render like it
(prompts always; whole conversations unless a built-in writes its final reply differently on
purpose). A mismatch is one line naming the conversation and the template family. Example::

    from medtune.data.tokenize.spans import Conversation
    from medtune.inference.template_check import check_conversation
    ids, labels = check_conversation(tok, Conversation(messages, "data/train.jsonl:3"))
"""

from __future__ import annotations

from medtune.errors import MedtuneError

FIRST_CONVERSATIONS = 4  # how many conversations `medtune train` checks before it trains


def check_conversation(tok, conv, reasoning: str = "learn", own=None) -> tuple[list[int], list[int]]:
    """Return the training ``(input_ids, labels)`` of ``conv`` (a ``spans.Conversation``) rendered by
    ``tok``; raise a one-line MedtuneError where training and serving disagree."""
    from medtune.data.tokenize.examples import IGNORE
    from medtune.data.tokenize.spans import encode_batch, template_family

    family = template_family(tok.chat_template)

    def fail(problem: str) -> MedtuneError:
        return MedtuneError(f"{conv.origin}: chat template '{family}': {problem}")

    (ids, labels), = encode_batch(tok, [conv], reasoning=reasoning)
    last = max(i for i, m in enumerate(conv.messages) if m.get("role") == "assistant")
    prompt = serving_prompt(tok, conv.messages[:last])
    if ids[:len(prompt)] != prompt:
        raise fail("the training tokens before the final reply are not the serving prompt")
    starts = len(prompt) < len(ids) and labels[len(prompt)] != IGNORE and (not prompt or labels[len(prompt) - 1] == IGNORE)
    if reasoning != "mask" and not starts:  # mask: the reply's trace is context, its answer learned later
        raise fail("the learned final reply does not start where the serving prompt ends")
    if own is not None:
        _compare_with_own(own, tok, conv, last, fail)
    return ids, labels


def check_first_conversations(tok, records, reasoning: str = "learn", count: int = FIRST_CONVERSATIONS) -> int:
    """Check the first ``count`` conversations (records with messages and a reply) of ``records``
    with :func:`check_conversation`, each named by its ``file:line`` when the reader kept it;
    return how many were checked."""
    from medtune.data.readers.records import origin
    from medtune.data.tokenize.spans import Conversation

    checked = 0
    for rec in records:
        messages = rec.get("messages")
        if not isinstance(messages, list) or not any(m.get("role") == "assistant" for m in messages):
            continue
        check_conversation(tok, Conversation(messages, origin(rec)), reasoning)
        checked += 1
        if checked == count:
            break
    return checked


def serving_prompt(tok, messages) -> list[int]:
    """What inference encodes for ``messages``: the ChatEngine prompt path."""
    from medtune.inference.engines import ChatEngine

    return ChatEngine("check", tok).encode_chat(messages)


def _compare_with_own(own, tok, conv, last: int, fail) -> None:
    from medtune.data.tokenize.templates import final_reply_rewritten, render, template_name

    if not own.chat_template or own.chat_template == tok.chat_template:
        return
    tokens = {"bos_token": own.bos_token or "", "eos_token": own.eos_token or ""}
    prompts = [conv.messages[:i] for i, m in enumerate(conv.messages) if m.get("role") == "assistant"]
    for messages in prompts:
        if render(own.chat_template, messages, add_generation_prompt=True, **tokens) != render(
                tok.chat_template, messages, add_generation_prompt=True, **tokens):
            raise fail(f"the serving prompt before reply {len(messages) // 2 + 1} differs from the tokenizer's "
                       "own template's")
    if not final_reply_rewritten(template_name(tok.chat_template)) and render(
            own.chat_template, conv.messages, **tokens) != render(tok.chat_template, conv.messages, **tokens):
        raise fail("the conversation renders differently under the tokenizer's own template")
