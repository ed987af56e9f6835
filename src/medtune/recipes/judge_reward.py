"""The ``judge`` reward: an LLM verifier behind an OpenAI-compatible endpoint scores completions.

In a grpo / rloo config::

    rl:
      reward_functions: [judge, no_repetition]
      judge:
        endpoint: http://127.0.0.1:8000/v1     # vllm serve Qwen/Qwen2.5-7B-Instruct, OpenAI, ...
        model: Qwen/Qwen2.5-7B-Instruct
        api_key_env: JUDGE_API_KEY             # the key is read from this variable, never the config
        cache_dir: runs/judge-cache            # optional: verdicts kept across runs

Each completion's answer (after any ``<think>`` trace) is put into ``rl.judge.prompt`` with the
question (the prompt's last user turn) and the record's ``reference``; the score is the last
match of ``rl.judge.score_pattern`` in the reply, mapped from [score_min, score_max] to [0, 1].
Verdicts are cached by the exact request: the same question + answer + reference is asked once
per run (memory) and once ever with ``cache_dir`` (disk, :class:`medtune.llm_client.ChatClient`'s
cache). Identical completions in a group cost one request.

**Failures** follow the ``checked_reward`` rule, no silent score: a reply the pattern cannot read
(or a score outside the range) is asked again at temperature 0.7, transient errors (connection,
timeout, HTTP 429/5xx) are retried ``rl.judge.retries`` times with backoff; after that the step is
refused with one line naming the reward, e.g. ``reward judge: unparsable reply after 3 retries
(no score in the reply: 'I think it is right'); step refused``. A 0 for "the judge failed" would
train the policy on the judge's outages.

>>> reward = JudgeReward(JudgeRewardConfig(endpoint="http://127.0.0.1:9/v1", model="m"))
>>> reward.parse("The answer matches. score: 1")
1.0
"""

from __future__ import annotations

import os
import re
import string
import threading
from collections import Counter

from medtune.config.schema import JudgeRewardConfig
from medtune.errors import MedtuneError
from medtune.llm_client import ChatClient, RequestFailed, Transport, UnparsableReply

__all__ = ["DEFAULT_PROMPT", "JudgeReward", "check_judge_config"]

JUDGE_REWARD_VERSION = 1  # part of the cache key: bump when DEFAULT_PROMPT changes
FIELDS = ("question", "answer", "reference")
DEFAULT_PROMPT = (
    "You are a strict medical examiner. Decide whether the model's answer to the question agrees "
    "with the reference answer: the same conclusion (diagnosis, drug, department, value ...), in "
    "any wording or language. An answer that hedges between several options, or adds a claim that "
    "contradicts the reference, does not agree.\n\n"
    "[Question]\n{question}\n[End of question]\n\n"
    "[Reference answer]\n{reference}\n[End of reference answer]\n\n"
    "[Model answer]\n{answer}\n[End of model answer]\n\n"
    'Reply with one line: "score: 1" if the model answer agrees with the reference, '
    '"score: 0" if it does not.'
)


def check_judge_config(j: JudgeRewardConfig, src: str) -> None:
    """Raise a one-line MedtuneError naming the ``rl.judge`` key that cannot work (reads the
    environment for ``api_key_env``; contacts nothing)."""
    if not j.endpoint or not j.model:
        raise MedtuneError(f"{src}: reward judge needs rl.judge.endpoint and rl.judge.model "
                           "(an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1)")
    if not re.match(r"https?://", j.endpoint):
        raise MedtuneError(f"{src}: rl.judge.endpoint {j.endpoint!r} must start with http:// or https://")
    if j.api_key_env and not os.environ.get(j.api_key_env):
        raise MedtuneError(f"{src}: rl.judge.api_key_env: environment variable {j.api_key_env} is not set")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(j.prompt or DEFAULT_PROMPT) if name is not None}
    except ValueError as exc:
        raise MedtuneError(f"{src}: rl.judge.prompt: {exc} (write a literal brace as {{{{ or }}}})") from None
    unknown = sorted(names - set(FIELDS))
    if unknown:
        raise MedtuneError(f"{src}: rl.judge.prompt: unknown field {{{unknown[0]}}} "
                           f"(use {', '.join('{' + f + '}' for f in FIELDS)})")
    if "answer" not in names:
        raise MedtuneError(f"{src}: rl.judge.prompt must contain {{answer}} (the completion to score)")
    try:
        groups = re.compile(j.score_pattern).groups
    except re.error as exc:
        raise MedtuneError(f"{src}: rl.judge.score_pattern is not a regular expression ({exc})") from None
    if groups != 1:
        raise MedtuneError(f"{src}: rl.judge.score_pattern must have exactly one group (the score), has {groups}")
    if not j.score_max > j.score_min:
        raise MedtuneError(f"{src}: rl.judge.score_max ({j.score_max}) must be above rl.judge.score_min ({j.score_min})")


class JudgeReward:
    """A TRL reward function (``fn(prompts, completions, reference=..., **kw)``) asking the judge
    of ``cfg``; :attr:`usage` counts requests, cache hits and tokens over the whole run."""

    __name__ = "judge"  # the name TRL logs the reward under

    def __init__(self, cfg: JudgeRewardConfig, transport: Transport | None = None):
        check_judge_config(cfg, "rl.judge")
        self.cfg = cfg
        self.pattern = re.compile(cfg.score_pattern, re.IGNORECASE)
        self.template = cfg.prompt or DEFAULT_PROMPT
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self.client = ChatClient(cfg.endpoint, cfg.model, api_key=api_key, retries=cfg.retries,
                                 timeout=cfg.timeout, cache_dir=cfg.cache_dir or None,
                                 temperature=0.0, retry_temperature=0.7,
                                 cache_version=JUDGE_REWARD_VERSION,
                                 cache_extra=("judge-reward", cfg.score_pattern, cfg.score_min,
                                              cfg.score_max),
                                 transport=transport)
        self._memory: dict[str, float] = {}  # request key -> reward, for this run
        self._usage: Counter = Counter()
        self._lock = threading.Lock()

    @property
    def usage(self) -> dict:
        """requests (HTTP attempts), cache_hits (memory + disk), scored (completions), tokens."""
        with self._lock:
            return dict(self._usage)

    def parse(self, content: str) -> float:
        """The reward in [0, 1] a judge reply gives; raises UnparsableReply saying why not."""
        from medtune.inference.reasoning import split_trace

        text = split_trace(content)[1]
        found = self.pattern.findall(text)
        if not found:
            raise UnparsableReply(f"no score in the reply: {text.strip()[:80]!r}")
        try:
            score = float(found[-1])
        except ValueError:
            raise UnparsableReply(f"score {found[-1]!r} is not a number") from None
        low, high = self.cfg.score_min, self.cfg.score_max
        if not low <= score <= high:
            raise UnparsableReply(f"score {score:g} is outside {low:g}-{high:g}")
        return (score - low) / (high - low)

    def messages(self, question: str, answer: str, reference: str) -> list[dict]:
        content = self.template.format(question=question, answer=answer, reference=reference)
        return [{"role": "user", "content": content}]

    def _ask(self, item: tuple[str, list[dict]]) -> float:
        key, messages = item
        try:
            return self.client.complete(messages, parse=self.parse)
        except RequestFailed as e:
            retries = f" after {self.client.retries} retries" if self.client.retries else ""
            detail = f" ({e.detail})" if e.detail else ""
            raise MedtuneError(f"reward judge: {e.reason}{retries} from {self.client.url}{detail}; "
                               "step refused") from None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        from medtune.recipes.rewards import _question, _references, answer_text

        refs = _references(kwargs, "judge")
        keys, todo = [], {}
        for prompt, completion, ref in zip(prompts, completions, refs):
            messages = self.messages(_question(prompt), answer_text(completion), ref)
            key = self.client.cache_key(messages)
            keys.append(key)
            if key not in self._memory:
                todo.setdefault(key, messages)
        self.client.reset()  # map_ordered stops the client when done: re-arm it for this batch
        for (key, _), score in self.client.map_ordered(self._ask, todo.items(), self.cfg.concurrency):
            self._memory[key] = score
        with self._lock:
            self._usage.update(self.client.usage)
            self._usage["cache_hits"] += len(keys) - len(todo)
            self._usage["scored"] += len(keys)
        return [self._memory[key] for key in keys]
