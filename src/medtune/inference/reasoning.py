"""Reasoning traces at inference: a thinking budget for ``generate`` and the trace split off a reply.

Example::

    from medtune.inference.reasoning import TraceStream, split_trace
    split_trace("<think>\\nlow rate, athlete\\n</think>\\n\\nNot for a fit adult.")
    # ('low rate, athlete', 'Not for a fit adult.')

    stream = TraceStream()
    stream.feed("<thi") + stream.feed("nk>\\nlow rate</th") + stream.feed("ink>\\n\\nNo.") + stream.finish()
    # [('reasoning', 'low rate'), ('content', 'No.')]
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
CLOSING = "\n</think>\n\n"  # appended when the budget runs out (what Qwen3 writes after a trace)
_TAIL = 8  # tokens decoded to spot a marker that just appeared


def opens_thinking(text: str) -> bool:
    """Whether ``text`` (a prompt) ends inside an open ``<think>`` block (DeepSeek-R1's prompts do)."""
    return text.rfind(OPEN) > text.rfind(CLOSE)


def prompt_opens_thinking(tokenizer, prompt_ids) -> bool:
    """Whether the token ids of a prompt end inside an open ``<think>`` block."""
    return opens_thinking(tokenizer.decode(list(prompt_ids)[-_TAIL:], skip_special_tokens=False))


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


class TraceStream:
    """A reply arriving in pieces, split as it comes into ``("reasoning", text)`` and
    ``("content", text)`` pieces (the API's ``delta.reasoning_content`` / ``delta.content``).

    The pieces of a reply join to what ``split_trace(reply, opened)`` gives for a reply with one
    leading block; a ``</think>`` in a reply that opened no block is content here (a stream cannot
    wait for it). A possible start of ``<think>`` / ``</think>`` split across pieces, and newlines
    that may precede ``</think>``, are held back until the next piece tells. ``reasoned``: whether
    the reply has a trace (a prompt that ``opened`` one always has, maybe empty).
    """

    def __init__(self, opened: bool = False):
        self.state = "trace" if opened else "start"  # start | trace | after (the trace) | answer
        self.reasoned, self.buf, self.lead = opened, "", True  # lead: newlines at a start are dropped

    def feed(self, text: str, final: bool = False) -> list[tuple[str, str]]:
        """Return the pieces ``text`` completes (non-empty); ``final``: the reply ends here."""
        self.buf += text
        out: list[tuple[str, str]] = []
        if self.state == "start":
            head = self.buf.lstrip()
            if head.startswith(OPEN):
                self.state, self.reasoned, self.buf = "trace", True, head[len(OPEN):]
            elif final or not OPEN.startswith(head):
                self.state, self.lead = "answer", False  # no trace: the reply verbatim
            else:
                return out  # blank so far, or the start of "<think>"
        if self.state == "trace":
            self._trace(out, final)
        if self.state == "after" and self.lead:
            self.buf = self.buf.lstrip("\n")
            if self.buf:
                self.state = "answer"
        if self.state == "answer" and self.buf:
            out.append(("content", self.buf))
            self.buf = ""
        return out

    def finish(self) -> list[tuple[str, str]]:
        """Return the held-back rest once the reply has ended."""
        return self.feed("", final=True)

    def _trace(self, out: list, final: bool) -> None:
        if self.lead:
            self.buf = self.buf.lstrip("\n")
        if CLOSE in self.buf:
            trace, self.buf = self.buf.split(CLOSE, 1)
            self._say(out, trace.rstrip("\n"))
            self.state, self.lead = "after", True
            return
        held = 0 if final else _partial_tag(self.buf, CLOSE)
        body = self.buf[:len(self.buf) - held]
        said = body.rstrip("\n")
        self._say(out, said)
        self.buf = "" if final else self.buf[len(said):]

    def _say(self, out: list, text: str) -> None:
        if text:
            out.append(("reasoning", text))
            self.lead = False


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag`` (0: none)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


def split_reply(text: str, opened: bool = False) -> tuple[str | None, str]:
    """Return ``(reasoning or None, content)`` of a whole reply exactly as ``TraceStream`` streams it."""
    stream = TraceStream(opened)
    pieces = stream.feed(text) + stream.finish()
    reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
    return (reasoning if stream.reasoned else None), "".join(t for kind, t in pieces if kind == "content")


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
