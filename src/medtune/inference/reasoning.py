"""Reasoning traces at inference: a thinking budget for ``generate`` and the trace split off a reply.

Example::

    from medtune.inference.reasoning import split_trace
    split_trace("<think>\\nlow rate, athlete\\n</think>\\n\\nNot for a fit adult.")
    # ('low rate, athlete', 'Not for a fit adult.')
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
CLOSING = "\n</think>\n\n"  # appended when the budget runs out (what Qwen3 writes after a trace)
_TAIL = 8  # tokens decoded to spot a marker that just appeared


def opens_thinking(text: str) -> bool:
    """Whether ``text`` (a prompt) ends inside an open ``<think>`` block (DeepSeek-R1's prompts do)."""
    return text.rfind(OPEN) > text.rfind(CLOSE)


def split_trace(text: str, opened: bool = False) -> tuple[str | None, str]:
    """Return ``(reasoning or None, answer)`` of a generated reply: a leading ``<think>…</think>``
    block, or everything up to a ``</think>`` without its opening tag (the prompt ``opened`` the
    block, as DeepSeek-R1's do), is the trace. An unclosed trace is all reasoning, no answer."""
    head = text.lstrip()
    if not opened and not head.startswith(OPEN) and CLOSE not in text:
        return None, text
    body = head[len(OPEN):] if head.startswith(OPEN) else text
    if not opened and OPEN in body.split(CLOSE, 1)[0]:
        return None, text  # a <think> tag mid-answer: not a leading trace
    if CLOSE not in body:
        return body.strip("\n"), ""
    trace, answer = body.split(CLOSE, 1)
    return trace.strip("\n"), answer.lstrip("\n")


class ThinkingBudget:
    """A transformers logits processor: once a row has ``budget`` tokens inside an open ``<think>``
    block, the next tokens are forced to ``CLOSING`` and generation goes on with the answer.

    ``prompts``: each row's prompt ids; ``width``: the left-padded prompt width in ``input_ids``.
    """

    def __init__(self, tokenizer, budget: int, prompts, width: int):
        self.tok, self.budget, self.width = tokenizer, budget, width
        self.closing = tokenizer(CLOSING, add_special_tokens=False)["input_ids"]
        tails = tokenizer.batch_decode([p[-_TAIL:] for p in prompts], skip_special_tokens=False)
        # per row: generated-token index where the block opened (None: not open), forced so far, done
        self.opened = [0 if opens_thinking(t) else None for t in tails]
        self.forced = [None] * len(prompts)
        self.done = [False] * len(prompts)

    def __call__(self, input_ids, scores):
        for i, row in enumerate(input_ids.tolist()):
            token = self._next(i, row[self.width:])
            if token is not None:
                scores[i, :] = float("-inf")
                scores[i, token] = 0.0
        return scores

    def _next(self, i: int, generated: list[int]) -> int | None:
        """The token row ``i`` must produce next, or None to leave it free."""
        if self.forced[i] is not None:
            if self.forced[i] < len(self.closing):
                self.forced[i] += 1
                return self.closing[self.forced[i] - 1]
            self.done[i], self.forced[i] = True, None
        if self.done[i]:
            return None
        tail = self.tok.decode(generated[-_TAIL:], skip_special_tokens=False) if generated else ""
        if self.opened[i] is None:
            if OPEN not in tail:
                return None
            self.opened[i] = len(generated)  # counted from the token after <think>
        elif CLOSE in tail and len(generated) > self.opened[i]:
            self.done[i] = True
            return None
        if len(generated) - self.opened[i] >= self.budget:
            self.forced[i] = 1
            return self.closing[0]
        return None
