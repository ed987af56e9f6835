"""Reward functions for the online RL stages (grpo, rloo), and the lookup of user-supplied ones.

Each built-in has TRL's reward-function signature: ``fn(prompts, completions, **kwargs)`` returns
one float per completion; ``kwargs`` carry the dataset's other columns (``reference``: the answer
text of the record) and ``completion_ids``. Completions are strings or assistant message lists.
``choice_match`` and ``answer_match`` are verifiers: 1.0 for a right answer, 0.0 otherwise, read
after any leading ``<think>…</think>`` trace. Example::

    from medtune.recipes.rewards import reward_function
    overlap = reward_function("reference_overlap")
    overlap(prompts=[[]], completions=["头痛"], reference=["头痛头晕。"])  # [0.666…]
    question = [{"role": "user", "content": "哪种药？\nA. 阿司匹林\nB. 青霉素"}]
    reward_function("choice_match")([question], ["<think>…</think>答案是B。"], reference=["B"])  # [1.0]

In a config::

    rl:
      reward_functions: [reference_overlap, no_repetition, mypkg.scoring:cites_guideline]

``judge`` (an LLM verifier behind an OpenAI-compatible endpoint, set up under ``rl.judge``) is
built from the config: see :mod:`medtune.recipes.judge_reward`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
import unicodedata
from collections import Counter

from medtune.errors import MedtuneError, did_you_mean
from medtune.inference.reasoning import split_trace

# A unit is one Latin word / number or one other visible character (a CJK character is a unit).
_UNIT = re.compile(r"[A-Za-z0-9]+|\S")
REPEAT_N = 4  # n-gram size for no_repetition: 4 CJK characters or 4 words


def text_units(text: str, punctuation: bool = False) -> list[str]:
    """Return the lower-cased units of ``text``: CJK characters and Latin words (punctuation dropped
    unless ``punctuation``)."""
    units = [u.lower() for u in _UNIT.findall(text)]
    if punctuation:
        return units
    return [u for u in units if len(u) > 1 or unicodedata.category(u)[0] not in "PS"]


def completion_text(completion) -> str:
    """Return the text of a completion: a string, or the joined contents of a message list."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion)


def _references(kwargs: dict, name: str) -> list[str]:
    if "reference" not in kwargs:
        raise MedtuneError(f"reward {name} needs the dataset's 'reference' column (the record's answer)")
    return kwargs["reference"]


def overlap_f1(candidate: str, reference: str) -> float:
    """Return the F1 of the unit multisets of ``candidate`` and ``reference`` (0 when either is empty)."""
    cand, ref = Counter(text_units(candidate)), Counter(text_units(reference))
    common = sum((cand & ref).values())
    if not common:
        return 0.0
    precision, recall = common / sum(cand.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def reference_overlap(prompts, completions, **kwargs) -> list[float]:
    """Return F1 in [0, 1] between each completion and its reference answer: character-level for
    Chinese (each CJK character a unit), word-level for Latin script; punctuation ignored."""
    refs = _references(kwargs, "reference_overlap")
    return [overlap_f1(completion_text(c), r) for c, r in zip(completions, refs)]


def length(prompts, completions, completion_ids=None, max_new_tokens=None, **kwargs) -> list[float]:
    """Return a penalty in [-1, 0]: ``-|len(completion) - len(reference)| / len(reference)`` in units,
    capped at -1; a completion cut off at ``max_new_tokens`` (it never ended) gets -1."""
    refs = _references(kwargs, "length")
    ids = completion_ids if completion_ids is not None else [None] * len(completions)
    out = []
    for c, r, c_ids in zip(completions, refs, ids):
        if max_new_tokens and c_ids is not None and len(c_ids) >= max_new_tokens:
            out.append(-1.0)
            continue
        n, target = len(text_units(completion_text(c))), max(len(text_units(r)), 1)
        out.append(-min(1.0, abs(n - target) / target))
    return out


def repeated_fraction(text: str, n: int = REPEAT_N) -> float:
    """Return the share of the ``n``-grams of ``text`` (units, punctuation kept) that repeat an
    earlier one: 0 for text without repeats or shorter than ``n`` units."""
    units = text_units(text, punctuation=True)
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def no_repetition(prompts, completions, **kwargs) -> list[float]:
    """Return minus the repeated 4-gram share of each completion, in [-1, 0] (0: no loop)."""
    return [-repeated_fraction(completion_text(c)) for c in completions]


def answer_text(completion) -> str:
    """Return the answer of a completion: its text after any leading reasoning trace."""
    return split_trace(completion_text(completion))[1]


def _question(prompt) -> str:
    """Return the last user turn of a prompt (a message list) or the prompt itself (a string)."""
    if isinstance(prompt, str):
        return prompt
    return next((m.get("content") or "" for m in reversed(prompt) if m.get("role") == "user"), "")


def choice_match(prompts, completions, **kwargs) -> list[float]:
    """Return 1.0 where a completion picks the reference's option letters (all of them, for a
    multi-answer question), else 0.0. The options are the ``A. text`` lines of the prompt's last
    user turn; letters are read as ``medtune eval choice --method generate`` reads them (答案是B,
    "the answer is (B)", a leading letter), after any reasoning trace."""
    from medtune.data.readers.choice import find_option_lines
    from medtune.evaluation.extract import extract_answer

    refs = _references(kwargs, "choice_match")
    out = []
    for prompt, completion, ref in zip(prompts, completions, refs):
        options = find_option_lines(_question(prompt))
        if not options:
            raise MedtuneError("reward choice_match: the prompt has no option lines (A. text / (A) text)")
        gold = extract_answer(ref, options, multi=True)
        if gold is None:
            raise MedtuneError(f"reward choice_match: reference {ref[:40]!r} names none of the options "
                               f"{', '.join(options)}")
        picked = extract_answer(answer_text(completion), options, multi=len(gold) > 1)
        out.append(float(picked == gold))
    return out


def answer_match(prompts, completions, **kwargs) -> list[float]:
    """Return 1.0 where a completion's answer, normalised (NFKC, lower case, no spaces or
    punctuation), equals or contains the normalised reference, else 0.0. The answer is read after
    any reasoning trace; an empty reference matches nothing. Contains: pair with ``length`` when
    long answers listing many candidates should not win."""
    from medtune.data.clean.dedup import normalize_text

    refs = _references(kwargs, "answer_match")
    out = []
    for completion, ref in zip(completions, refs):
        gold, answer = normalize_text(split_trace(ref)[1]), normalize_text(answer_text(completion))
        out.append(float(bool(gold) and gold in answer))
    return out


BUILTIN = {"reference_overlap": reference_overlap, "length": length, "no_repetition": no_repetition,
           "choice_match": choice_match, "answer_match": answer_match}
CONFIGURED = ("judge",)  # built-ins made from the rl config (rl.judge): see medtune.recipes.judge_reward


def _check_scores(name: str, scores, n: int) -> list:
    """Return ``scores`` when they are ``n`` finite numbers or None (TRL: not applicable); raise a
    one-line MedtuneError naming the reward otherwise."""
    if not isinstance(scores, (list, tuple)) or len(scores) != n:
        got = f"{len(scores)} scores" if isinstance(scores, (list, tuple)) else f"a {type(scores).__name__}"
        raise MedtuneError(f"reward {name} returned {got} for {n} completions; step refused")
    for i, score in enumerate(scores):
        if score is None:
            continue
        if isinstance(score, bool) or not isinstance(score, (int, float)) and not hasattr(score, "__float__"):
            raise MedtuneError(f"reward {name} returned {score!r} for completion {i}, not a number; step refused")
        if not math.isfinite(float(score)):
            raise MedtuneError(f"reward {name} returned {float(score)} for completion {i}; step refused")
    return list(scores)


def _raised(name: str, exc: Exception) -> MedtuneError:
    if isinstance(exc, MedtuneError):
        return exc if f"reward {name}" in str(exc) else MedtuneError(f"reward {name}: {exc}")
    first = (str(exc).strip().splitlines() or [""])[0]
    return MedtuneError(f"reward {name} raised {type(exc).__name__}: {first}; step refused")


def checked_reward(fn, name: str):
    """Return ``fn`` wrapped so that an exception, a NaN / infinite score or a wrong count refuses
    the step with a one-line MedtuneError naming ``name`` (TRL would train on NaN or crash deep in
    the loop). Keeps the name TRL logs the reward under, and async-ness."""
    import functools

    base = fn.func if isinstance(fn, functools.partial) else fn
    call = base if inspect.isroutine(base) else type(base).__call__  # a callable instance: its __call__
    if inspect.iscoroutinefunction(call):
        async def run(prompts, completions, **kwargs):
            try:
                scores = await fn(prompts, completions, **kwargs)
            except Exception as exc:
                raise _raised(name, exc) from None
            return _check_scores(name, scores, len(completions))
    else:
        def run(prompts, completions, **kwargs):
            try:
                scores = fn(prompts, completions, **kwargs)
            except Exception as exc:
                raise _raised(name, exc) from None
            return _check_scores(name, scores, len(completions))
    run.__name__ = getattr(base, "__name__", type(base).__name__)
    run.__doc__ = base.__doc__
    run.wrapped = fn  # the reward itself (the judge's request counts go to lineage metrics)
    return run


def reward_function(spec: str):
    """Return the reward function ``spec`` names: a built-in or ``package.module:function``.

    Modules are imported with the current directory on ``sys.path`` (your own code next to the
    config). Raises a one-line MedtuneError for a missing module, function or non-callable. The
    ``judge`` reward is built from the rl config by :func:`medtune.recipes.rl.stage_reward`.
    """
    if ":" not in spec:
        if spec in CONFIGURED:
            raise MedtuneError(f"reward {spec} is built from the rl config (rl.{spec}): "
                               "use medtune.recipes.rl.stage_reward")
        if spec not in BUILTIN:
            raise MedtuneError(f"rl.reward_functions: '{spec}' is not a built-in reward"
                               + did_you_mean(spec, [*BUILTIN, *CONFIGURED]) + " (or write package.module:function)")
        return BUILTIN[spec]
    module_name, _, name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MedtuneError(f"rl.reward_functions: cannot import '{module_name}' for '{spec}': {exc}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise MedtuneError(f"rl.reward_functions: module '{module_name}' has no '{name}' (from '{spec}')")
    if not callable(fn):
        raise MedtuneError(f"rl.reward_functions: '{spec}' is a {type(fn).__name__}, not a function")
    return fn
