"""A local fake LLM judge (OpenAI-compatible) for tests: scores each answer by a marker in it.

>>> with FakeJudge(api_key="k") as judge:   # judge.url == "http://127.0.0.1:<port>/v1"
...     pass

It reads medtune's judge prompt: the answers between ``[回答X]`` and ``[回答X结束]``, and the score
keys and range from the reply format (``"safety": 1到3的整数``). An answer containing GOOD gets the
top score on every axis, one containing FAIR the middle, any other the bottom (dreamer: 2, not 0).
``faults`` are bad replies given first, one per request, in order: "garbage" (no JSON), "prose"
(right JSON with a sentence before it), "range" (a score above the top), "missing" (last label
left out), "float" (7.5), "extra" (an unknown key), "duplicate" (a label twice). ``fence`` wraps
good replies in a ```json fence. Everything FakeOpenAI has (api_key, fail_first, ...) works.
"""

from __future__ import annotations

import json
import re
from collections import deque

from tests.helpers.fake_openai import FakeOpenAI

GOOD, FAIR = "★", "☆"
ANSWER = re.compile(r"\[回答([A-Z])\]\n(.*?)\n\[回答\1结束\]", re.DOTALL)
AXIS = re.compile(r'"(\w+)": (\d+)到(\d+)的整数')


def grade(answer: str, low: int, high: int) -> int:
    """The score the fake judge gives an answer on every axis."""
    if GOOD in answer:
        return high
    if FAIR in answer:
        return (low + high) // 2
    return low + (high - low) // 5


def verdict(prompt: str) -> dict:
    """The correct reply object for a judge prompt."""
    axes = [(name, int(lo), int(hi)) for name, lo, hi in AXIS.findall(prompt)]
    return {label: {**{name: grade(text, lo, hi) for name, lo, hi in axes},
                    "reason": "含标记" if GOOD in text else "一般"}
            for label, text in ANSWER.findall(prompt)}


def faulty(kind: str, good: dict, prompt: str) -> str:
    """A reply of the given fault ``kind``, built from the correct ``good`` verdict."""
    first, last = next(iter(good)), list(good)[-1]
    axis, hi = AXIS.findall(prompt)[0][0], int(AXIS.findall(prompt)[0][2])
    bad = json.loads(json.dumps(good))
    if kind == "garbage":
        return "这几个回答都还不错。"
    if kind == "prose":
        return "好的，评分如下：" + json.dumps(good, ensure_ascii=False)
    if kind == "duplicate":
        body = json.dumps(good, ensure_ascii=False)[1:-1]
        return "{" + body + ", " + json.dumps({first: good[first]}, ensure_ascii=False)[1:]
    if kind == "range":
        bad[first][axis] = hi + 1
    elif kind == "missing":
        del bad[last]
    elif kind == "float":
        bad[first][axis] = 7.5
    elif kind == "extra":
        bad[first]["confidence"] = 1
    return json.dumps(bad, ensure_ascii=False)


class FakeJudge(FakeOpenAI):
    """The judge server; ``prompts`` holds the judge prompts answered with 200, in order."""

    def __init__(self, faults=(), fence: bool = False, **kw):
        super().__init__(fence=fence, **kw)
        self.faults = deque(faults)
        self.prompts: list[str] = []
        self.temperatures: list[float] = []

    def respond(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        good = verdict(prompt)
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            self.prompts.append(prompt)
            self.temperatures.append(body.get("temperature"))
        content = json.dumps(good, ensure_ascii=False)
        content = f"```json\n{content}\n```" if self.fence else content
        return self.chat_body(prompt, faulty(fault, good, prompt) if fault else content)


VERIFY = re.compile(r"\[Reference answer\]\n(.*?)\n\[End of reference answer\].*?\[Model answer\]\n(.*?)\n"
                    r"\[End of model answer\]", re.DOTALL)


class FakeVerifier(FakeOpenAI):
    """A verifier for the ``judge`` reward's built-in prompt: "score: 1" when the model answer
    contains the reference, else "score: 0". ``faults`` are bad replies given first, one per
    request: "garbage" (no score), "range" (score: 7), "think" (a trace whose score is wrong, then
    the right one). ``grade(reference, answer) -> 0 | 1`` replaces the containment rule.
    ``prompts`` holds every prompt answered with 200."""

    def __init__(self, faults=(), grade=None, **kw):
        super().__init__(**kw)
        self.faults = deque(faults)
        self.grade = grade or (lambda reference, answer: int(reference.strip() in answer))
        self.prompts: list[str] = []

    def respond(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        reference, answer = VERIFY.search(prompt).groups()
        score = self.grade(reference, answer)
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            self.prompts.append(prompt)
        content = {None: f"The answer {'agrees' if score else 'differs'}.\nscore: {score}",
                   "garbage": "I cannot decide.", "range": "score: 7",
                   "think": f"<think>score: {1 - score}</think>\nscore: {score}"}[fault]
        return self.chat_body(prompt, content)
