"""Multiple-choice benchmarks (CMB, CMExam, MedQA, MedMCQA, MMLU, CMMLU, PubMedQA) in their native files.

Example::

    from medtune.inference.chat import ChatModel
    from medtune.evaluation.choice import ChoiceSettings, evaluate_choice
    bot = ChatModel.load("runs/sft")
    result = evaluate_choice(bot, ["apollo/test/zh.json"], "runs/eval/choice",
                             ChoiceSettings(method="loglik", shots=3, limit=200))
    print(result.overall)                 # {"accuracy": ..., "n": 200}

**Prompt.** Each question is one user turn, rendered with the model's own chat template
(generation prompt added), so the assistant turn begins with the answer::

    以下是一道单项选择题，请直接给出正确答案的选项字母。      <- instruction: zh/en x single/multi

    背景：{context}                                           <- only when the item has one (PubMedQA)

    {question}
    A. {option A}
    B. {option B}

The wording is Chinese when the question holds a CJK character, else English ("The following is a
multiple-choice question ..." / "Context: ..."). A question is multi-answer when its answer key has
several letters (CMExam "(BCD)"); the instruction then says so, as CMB's ``question_type`` does.
Few-shot examples come first as earlier user / assistant turns (the assistant turn is just the
letters, "B" or "BCD"), taken from the dev files: same subject/source first, then the others in
file order. Shots are dropped one by one when the prompt would not fit the model's context;
a zero-shot prompt still too long is cut from the left (both counted in ``settings``).

**loglik.** Each candidate is scored as the continuation of the rendered prompt, split into tokens
the way lm-evaluation-harness does (encode prompt + candidate, the tokens past the prompt's).
When every candidate is one token, one forward pass per prompt reads all of them from the last
position's log-softmax; otherwise each candidate is its own sequence and its token log-probs are
summed. Single-answer: the candidates are the letters, the prediction is the argmax.
Multi-answer: the candidates are every letter set of two or more letters written as the model
would answer ("AC", "BCD"; sorted), the prediction is the set with the highest total
log-likelihood — the answer the model is most likely to give, without length normalisation.

**generate.** Greedy decoding; the letters are extracted with the rules of CMB and Apollo (see
:func:`extract_answer`). An answer with no extractable letter counts as wrong and is counted
under ``skipped["no answer found"]`` (it stays in ``n``).

**PubMedQA.** ``ori_pqal.json`` holds all 1,000 PQA-L questions; the official test split is the
500 PMIDs of ``test_ground_truth.json``. Pass both to ``--data``: an answer-key file (``{id:
label}``) restricts the questions to its ids and supplies their gold labels. Yes/no/maybe groups
also get macro-F1 (classes: the labels among gold and predictions, as scikit-learn's default).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.evaluation.extract import _plain, extract_answer
from medtune.evaluation.loglik import encode, score_candidates

__all__ = ["Benchmark", "ChoiceItem", "ChoiceSettings", "evaluate_choice", "extract_answer", "load_items",
           "macro_f1", "prepare_benchmark", "prompt_messages", "run_benchmark", "score_candidates",
           "summarize"]

_CJK = re.compile(r"[\u3400-\u9fff]")
_SPLITS = {"test", "dev", "train", "val", "valid", "validation"}
INSTRUCTIONS = {
    ("zh", False): "以下是一道单项选择题，请直接给出正确答案的选项字母。",
    ("zh", True): "以下是一道多项选择题（有多个正确答案），请直接给出所有正确答案的选项字母，如 AC。",
    ("en", False): "The following is a multiple-choice question with one correct answer. "
                   "Answer with the option letter only.",
    ("en", True): "The following is a multiple-choice question with more than one correct answer. "
                  "Answer with all the correct option letters only, e.g. AC.",
}
CONTEXT_LABEL = {"zh": "背景：", "en": "Context: "}
YES_NO_MAYBE = {"yes", "no", "maybe"}


@dataclass
class ChoiceItem:
    id: str
    group: str  # the record's subject; Apollo's `source`, CMMLU's file name
    question: str
    options: dict[str, str]
    answer: str  # "A" or sorted letters "BCD"
    context: str | None = None

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1

    @property
    def lang(self) -> str:
        return "zh" if _CJK.search(self.question) else "en"

    @property
    def yes_no_maybe(self) -> bool:
        return {_plain(t) for t in self.options.values()} == YES_NO_MAYBE


@dataclass
class ChoiceSettings:
    method: str = "loglik"  # loglik | generate
    shots: int = 0
    batch_size: int = 16
    limit: int | None = None
    max_new_tokens: int = 64
    dev: list = field(default_factory=list)  # dev files for shots


# ---------------------------------------------------------------------------------------------
# reading


def _default_source(path: Path) -> str:
    """A file's group name when its records carry none: the stem, or the folder for test.jsonl."""
    return path.parent.name if path.stem.lower() in _SPLITS and path.parent.name else path.stem


def _read(path) -> tuple[str, list[dict], object]:
    """``(shape, records, tally)`` of one file; rows that fail are counted, not fatal."""
    from medtune.data.readers.formats import SHAPES
    from medtune.data.readers.stream import ReadOptions, read_all

    path = Path(path)
    opts = ReadOptions(on_error="count", keep_meta=True, source=_default_source(path))
    records, tally = read_all(path, opts)
    shape = SHAPES[tally.format]
    if shape not in ("choice", "label"):
        raise MedtuneError(f"{path}: format {tally.format} gives {shape} records, not multiple-choice "
                           "questions (question + options + answer, CMMLU CSV or PubMedQA)")
    return shape, records, tally


def _item(rec: dict, fallback_id: str) -> ChoiceItem:
    return ChoiceItem(id=str(rec.get("id", fallback_id)), group=str(rec.get("subject", "all")),
                      question=rec["question"], options=rec["options"], answer=rec["answer"],
                      context=rec.get("context"))


def load_items(paths, limit: int | None = None) -> tuple[list[ChoiceItem], Counter, list[str]]:
    """``(items, skipped counts, skipped examples "file:line: why")`` of benchmark files.

    Answer-key files (``{id: label}``, PubMedQA's test_ground_truth.json) restrict the questions
    of the other files to their ids and give their gold answers.
    """
    items, keys, skipped, examples = [], {}, Counter(), []
    for path in paths:
        shape, records, tally = _read(path)
        skipped.update(tally.skipped)
        examples += [e for shown in tally.examples.values() for e in shown]
        if shape == "label":
            keys.update({str(r["id"]): r["answer"] for r in records})
        else:
            items += [_item(r, f"{Path(path).stem}:{i}") for i, r in enumerate(records)]
    if not items:
        raise MedtuneError("no questions: --data holds only answer-key files")
    if keys:
        items = _apply_key(items, keys, skipped)
    return items[:limit] if limit else items, skipped, examples


def _apply_key(items: list[ChoiceItem], keys: dict, skipped: Counter) -> list[ChoiceItem]:
    """Keep the items whose id is in the answer key, with the key's label as their answer."""
    kept = []
    for item in items:
        if item.id not in keys:
            continue
        label = keys[item.id].strip()
        letter = label if label in item.options else \
            next((k for k, v in item.options.items() if _plain(v) == _plain(label)), None)
        if letter is None:
            skipped["answer-key label not among the options"] += 1
            continue
        kept.append(replace(item, answer=letter))
    if not kept:
        raise MedtuneError("the answer key's ids match no question of --data (wrong pair of files?)")
    missing = len(set(keys) - {i.id for i in items})
    if missing:
        skipped["answer-key id not in --data"] += missing
    return kept


def default_dev(paths) -> list[Path]:
    """Dev splits next to the test files: ``x/test/y.json`` -> ``x/dev/y.json``, ``test.jsonl`` ->
    ``dev.jsonl``; the ones that exist."""
    found = []
    for path in map(Path, paths):
        parts = list(path.parts)
        for i in range(len(parts) - 1, -1, -1):
            stem, dot, ext = parts[i].partition(".")
            if stem == "test":
                candidate = Path(*parts[:i], "dev" + dot + ext, *parts[i + 1:])
                if candidate.is_file() and candidate not in found:
                    found.append(candidate)
                break
    return found


# ---------------------------------------------------------------------------------------------
# prompts


def question_text(item: ChoiceItem) -> str:
    """The user turn of one question (see the module docstring)."""
    block = "\n".join([item.question, *(f"{k}. {v}" for k, v in item.options.items())])
    parts = [INSTRUCTIONS[item.lang, item.multi]]
    if item.context:
        parts.append(CONTEXT_LABEL[item.lang] + item.context)
    return "\n\n".join(parts + [block])


def prompt_messages(item: ChoiceItem, shots=()) -> list[dict]:
    """Chat messages: each shot as a user / assistant pair, then the question as a user turn."""
    messages = []
    for shot in shots:
        messages += [{"role": "user", "content": question_text(shot)},
                     {"role": "assistant", "content": shot.answer}]
    return messages + [{"role": "user", "content": question_text(item)}]


class ShotPicker:
    """Dev examples for an item: the same group first, then the rest, in file order."""

    def __init__(self, dev: list[ChoiceItem]):
        self.dev, self.by_group = dev, defaultdict(list)
        for ex in dev:
            self.by_group[ex.group].append(ex)

    def pick(self, item: ChoiceItem, n: int) -> list[ChoiceItem]:
        if n <= 0:
            return []
        same = self.by_group.get(item.group, [])
        pool = itertools.chain(same, (ex for ex in self.dev if ex.group != item.group))
        return list(itertools.islice((ex for ex in pool if ex.question != item.question), n))


def render_prompts(tokenizer, items, picker: ShotPicker | None, shots: int, reserve: int,
                   max_len: int | None) -> tuple[list[str], list[list[int]], Counter]:
    """``(prompt texts, token ids, counts)`` for the items; ``reserve`` tokens are kept free for
    the answer. Shots are dropped until a prompt fits, then the prompt is cut from the left."""
    texts, ids, counts = [], [], Counter()
    for item in items:
        text, tokens = _fit_prompt(tokenizer, item, picker.pick(item, shots) if picker else [],
                                   max_len - reserve if max_len else None, counts)
        texts.append(text)
        ids.append(tokens)
    return texts, ids, counts


def _fit_prompt(tokenizer, item, examples, room: int | None, counts: Counter):
    from medtune.data.tokenize.examples import render_chat

    while True:
        text = render_chat(tokenizer, prompt_messages(item, examples), add_generation_prompt=True)
        tokens = encode(tokenizer, text)
        if room is None or len(tokens) <= room:
            return text, tokens
        if not examples:
            counts["prompts cut from the left"] += 1
            return text, tokens[-room:]
        examples = examples[:-1]
        counts["shots dropped"] += 1


def candidates(item: ChoiceItem) -> list[str]:
    """Letters for a single-answer item; every set of two or more letters for a multi-answer one."""
    letters = list(item.options)
    if not item.multi:
        return letters
    return ["".join(c) for k in range(2, len(letters) + 1) for c in itertools.combinations(letters, k)]


# ---------------------------------------------------------------------------------------------
# metrics


def macro_f1(gold: list[str], pred: list[str | None]) -> float:
    """Macro-F1 over the labels present in ``gold`` and ``pred`` (None: no answer, a miss for the
    gold label), as scikit-learn's ``f1_score(average="macro")``."""
    labels = sorted(set(gold) | {p for p in pred if p is not None})
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def _labels(rows: list[dict], key: str) -> list[str | None]:
    """The option texts ("yes", "no", "maybe") of the letters in ``key`` (None: no answer)."""
    return [_plain(r["options"][r[key]]) if r[key] else None for r in rows]


def _metrics(rows: list[dict], method: str) -> dict:
    out = {"accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else 0.0}
    if rows and all(r["yes_no_maybe"] for r in rows):
        out["macro_f1"] = macro_f1(_labels(rows, "answer"), _labels(rows, "prediction"))
    if method == "generate":
        out["no_answer"] = sum(not r["prediction"] for r in rows)
    out["n"] = len(rows)
    return out


def summarize(rows: list[dict], method: str = "loglik") -> tuple[dict, dict]:
    """``(overall, groups)`` metrics of per-item rows (``group``, ``correct``, ``answer``,
    ``prediction``, ``options``, ``yes_no_maybe``)."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    return _metrics(rows, method), {g: _metrics(rs, method) for g, rs in sorted(groups.items())}


# ---------------------------------------------------------------------------------------------
# the evaluation


def _predict_loglik(bot, items, texts, ids, settings, progress) -> list[dict]:
    cands = [candidates(i) for i in items]
    scores = score_candidates(bot.model, bot.tokenizer, ids, texts, cands, settings.batch_size, progress)
    return [{"prediction": max(s, key=s.get), "scores": {k: round(v, 6) for k, v in s.items()}}
            for s in scores]


def _predict_generate(bot, items, ids, settings, progress) -> list[dict]:
    order = sorted(range(len(items)), key=lambda i: -len(ids[i]))
    replies = [None] * len(items)
    for start in range(0, len(order), settings.batch_size):
        batch = order[start:start + settings.batch_size]
        outs = bot.generate_batch([ids[i] for i in batch], max_new_tokens=settings.max_new_tokens,
                                  temperature=0.0)
        for i, reply in zip(batch, outs):
            replies[i] = reply
        progress.update(len(batch))
    return [{"prediction": extract_answer(r, it.options, it.multi) or "", "response": r}
            for r, it in zip(replies, items)]


def _rows(items, preds) -> list[dict]:
    return [{"id": it.id, "group": it.group, "question": it.question, "options": it.options,
             "answer": it.answer, **p, "correct": p["prediction"] == it.answer,
             "yes_no_maybe": it.yes_no_maybe} for it, p in zip(items, preds)]


def _dev_items(settings: ChoiceSettings, data) -> ShotPicker | None:
    if settings.shots <= 0:
        return None
    dev = settings.dev or default_dev(data)
    if not dev:
        raise MedtuneError(f"--shots {settings.shots} needs dev examples: pass --dev FILE "
                           f"(no dev split found next to {', '.join(map(str, data))})")
    settings.dev = [str(p) for p in dev]
    return ShotPicker(load_items(dev)[0])


def _max_len(model) -> int | None:
    n = getattr(model.config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


@dataclass
class Benchmark:
    """Questions read and checked before any model is loaded."""

    data: list[str]
    settings: ChoiceSettings
    items: list[ChoiceItem]
    skipped: Counter
    examples: list[str]  # "file:line: why" of skipped rows
    picker: ShotPicker | None


def prepare_benchmark(data, settings: ChoiceSettings | None = None) -> Benchmark:
    """Read the benchmark and dev files (errors surface here, before the model load)."""
    settings = settings or ChoiceSettings()
    if settings.method not in ("loglik", "generate"):
        raise MedtuneError(f"unknown method '{settings.method}' (loglik or generate)")
    items, skipped, examples = load_items(data, settings.limit)
    picker = _dev_items(settings, data)
    return Benchmark([str(p) for p in data], settings, items, skipped, examples, picker)


def evaluate_choice(bot, data, out_dir, settings: ChoiceSettings | None = None, model_name: str = "",
                    quiet: bool = False):
    """Evaluate ``bot`` (a ChatModel) on benchmark files; write ``metrics.json`` and
    ``predictions.jsonl`` to ``out_dir`` and return the :class:`EvalResult`."""
    return run_benchmark(bot, prepare_benchmark(data, settings), out_dir, model_name, quiet)


def run_benchmark(bot, bench: Benchmark, out_dir, model_name: str = "", quiet: bool = False):
    """Score, summarize and write one prepared benchmark; return the :class:`EvalResult`."""
    from tqdm.auto import tqdm

    from medtune.evaluation.results import EvalResult, write_result

    settings, items, started = bench.settings, bench.items, time.perf_counter()
    reserve = settings.max_new_tokens if settings.method == "generate" else \
        max(len(c) for i in items for c in candidates(i)) + 2
    texts, ids, fit = render_prompts(bot.tokenizer, items, bench.picker, settings.shots, reserve,
                                     _max_len(bot.model))
    unit = "row" if settings.method == "loglik" else "question"  # loglik: prompts or candidates
    with tqdm(total=len(items), desc=f"eval choice ({settings.method})", unit=unit, disable=quiet) as bar:
        if settings.method == "loglik":
            preds = _predict_loglik(bot, items, texts, ids, settings, bar)
        else:
            preds = _predict_generate(bot, items, ids, settings, bar)
    rows = _rows(items, preds)
    overall, groups = summarize(rows, settings.method)
    skipped = Counter(bench.skipped)
    if settings.method == "generate":
        skipped["no answer found"] = overall["no_answer"]
    _write_predictions(Path(out_dir) / "predictions.jsonl", rows)
    _warn(bench.examples, quiet)
    result = EvalResult(task="choice", model=model_name, data=bench.data, overall=overall,
                        group_by="subject", groups=groups, skipped=dict(skipped),
                        settings={**settings.__dict__, **fit, "multi_answer": "argmax over letter sets"},
                        samples="predictions.jsonl", seconds=round(time.perf_counter() - started, 2))
    write_result(result, out_dir, quiet=quiet)
    return result


def _write_predictions(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            row = {k: v for k, v in r.items() if k != "yes_no_maybe"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _warn(examples: list[str], quiet: bool) -> None:
    import sys

    if not quiet:
        for line in examples[:10]:
            print(f"skipped {line}", file=sys.stderr)
