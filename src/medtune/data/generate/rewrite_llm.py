"""Knowledge augmentation by an LLM: each passage → N rewrites (and Q&A pairs) grounded in it.

The rule rewrites of :mod:`medtune.data.generate.rewrite` reorder and re-template; an LLM behind
any OpenAI-compatible endpoint rewrites freely, so a fact is stored from several phrasings
(Allen-Zhu & Li, Physics of LMs 3.1; HuatuoGPT-II turns its corpus into instructions the same
way). One request per passage asks for ``{"rewrites": [...], "qa": [{"question", "answer"}]}``.
Nothing the endpoint says is trusted:

- a reply that is not that JSON object (prose, wrong types, empty strings) is asked again, then
  the passage is counted as failed with the reason (``unparsable reply``): nothing is written;
- a rewrite is kept only when it is **grounded** (at least ``min_support`` of its content units
  occur in the passage: nothing added), **complete** (it holds at least ``min_coverage`` of the
  passage's distinct units: facts not dropped), **new** (not the passage or an earlier rewrite,
  after normalisation) and at most ``MAX_GROWTH`` times the passage's length; a Q&A pair when the
  passage supports its answer. Each refusal is counted by reason.

>>> parse_rewrite_reply('{"rewrites": ["甲。"], "qa": []}', 1, 0)
(['甲。'], [])
>>> coverage("偏头痛应到神经内科就诊。", set(content_units("偏头痛的就诊科室是神经内科。")))
0.9

With a server at http://127.0.0.1:8000/v1 (``vllm serve``, ``medtune serve api``, ...)::

    gen = PassageRewriter("http://127.0.0.1:8000/v1", "qwen", rewrites=4, questions=2,
                          cache_dir=Path("runs/rewrite-cache"))
    records = list(gen.run(read_passages("corpus.txt")))   # text records, then messages records
    print(gen.summary)   # passages, failed, rewrites_kept, ungrounded_rewrites, ... tokens

``medtune data generate rewrite corpus.txt -o corpus.rw.jsonl --mode endpoint --endpoint URL
--model qwen --n 4 --questions 2 --qa-out corpus.qa.jsonl``
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medtune.data.clean.dedup import normalize_text
from medtune.data.generate.passage_qa import (
    JobOutcome,
    PassageJob,
    content_units,
    grounded_qa_records,
    support,
)
from medtune.errors import MedtuneError
from medtune.llm_client import Transport, UnparsableReply, reply_json

__all__ = ["MAX_GROWTH", "PassageRewriter", "coverage", "parse_rewrite_reply"]

MAX_GROWTH = 2.0  # a rewrite longer than this many times its passage is padding, not a rewrite
_PROMPTS = {
    "zh": (
        "请阅读<passage>标签中的医学资料，完成两项任务。\n"
        "1. 改写{n}遍：每一遍都完整保留资料中的全部事实（疾病、症状、药物、数值等一个都不能少），"
        "不添加资料以外的任何信息，但换用不同的句式、语序和叙述角度，各遍之间也要互不相同；\n"
        "2. 编写{q}个问答对：问题是患者或医学生可能会问的自然问题，答案只依据资料，尽量沿用原文表述。\n"
        '只输出一个JSON对象，格式为{{"rewrites": ["改写1", ...], "qa": [{{"question": "...", '
        '"answer": "..."}}]}}，不要输出其他文字。\n\n<passage>\n{passage}\n</passage>'
    ),
    "en": (
        "Read the medical text in the <passage> tags and do two things.\n"
        "1. Rewrite it {n} times. Each rewrite keeps every fact of the passage (diseases, symptoms, "
        "drugs, numbers: none left out) and adds nothing from outside it, but uses different "
        "sentence structures, order and angle; the rewrites differ from each other too.\n"
        "2. Write {q} question-answer pairs: natural questions a patient or medical student might "
        "ask, answered only from the passage, preferably in its own words.\n"
        'Output only a JSON object, {{"rewrites": ["rewrite 1", ...], "qa": [{{"question": "...", '
        '"answer": "..."}}]}}, and no other text.\n\n<passage>\n{passage}\n</passage>'
    ),
}


def _strings(value, what: str) -> list[str]:
    if not isinstance(value, list):
        raise UnparsableReply(f'"{what}" must be a list, got {type(value).__name__}')
    for i, item in enumerate(value, 1):
        if not isinstance(item, str) or not item.strip():
            raise UnparsableReply(f'"{what}" item {i} is not a non-empty string')
    return [item.strip() for item in value]


def parse_rewrite_reply(content: str, rewrites: int, questions: int) -> tuple[list[str], list]:
    """``(rewrites, [(question, answer)])`` from a reply ``{"rewrites": [...], "qa": [...]}``
    (a ```json fence is tolerated; ``qa`` may be left out when no questions were asked); raises
    UnparsableReply naming what is wrong."""
    reply = reply_json(content, dict)
    if "rewrites" not in reply:
        raise UnparsableReply('no "rewrites" key')
    texts = _strings(reply["rewrites"], "rewrites")
    if not texts and rewrites:
        raise UnparsableReply('"rewrites" is empty')
    qa = reply.get("qa", [])
    if questions and "qa" not in reply:
        raise UnparsableReply('no "qa" key')
    if not isinstance(qa, list):
        raise UnparsableReply(f'"qa" must be a list, got {type(qa).__name__}')
    pairs = []
    for i, item in enumerate(qa, 1):
        values = [item.get(k) if isinstance(item, dict) else None for k in ("question", "answer")]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise UnparsableReply(f'"qa" item {i} has no "question" and "answer" strings')
        pairs.append((values[0].strip(), values[1].strip()))
    return texts, pairs


def coverage(rewrite: str, passage_units: set[str]) -> float:
    """The fraction of the passage's distinct content units that ``rewrite`` holds (1.0 for a
    passage without units)."""
    if not passage_units:
        return 1.0
    return len(passage_units & set(content_units(rewrite))) / len(passage_units)


class PassageRewriter(PassageJob):
    """Writes ``rewrites`` rewrites (and ``questions`` Q&A pairs) of each passage, keeping only
    what the passage grounds (see the module docstring for the checks).

    :meth:`run` yields ``{"text", "id": "PID~k", "source": "rewrite", "passage_id"}`` records
    (the passage itself first, as ``{"text", "id"}``, when ``keep_original``) and ``messages``
    records (``source`` "rewrite-qa") for the pairs. :attr:`summary` counts rewrites_generated,
    rewrites_kept, ungrounded_rewrites, incomplete_rewrites, duplicate_rewrites, long_rewrites,
    surplus (items beyond what was asked, dropped), pairs_generated, pairs_kept, ungrounded_pairs,
    and passages with fewer rewrites kept than asked (``short``). Retries, cache and failures
    (an unparsable reply after the retries: ``failed_reasons["unparsable reply"]``) are
    :class:`PassageJob`'s.
    """

    COUNTS = ("passages", "failed", "rewrites_generated", "rewrites_kept", "ungrounded_rewrites",
              "incomplete_rewrites", "duplicate_rewrites", "long_rewrites", "surplus", "short",
              "pairs_generated", "pairs_kept", "ungrounded_pairs")

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, rewrites: int = 4,
                 questions: int = 0, concurrency: int = 4, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 120.0, cache_dir: Path | None = None, temperature: float = 0.9,
                 lang: str = "auto", min_support: float = 0.8, min_coverage: float = 0.6,
                 keep_original: bool = False, transport: Transport | None = None):
        if rewrites < 1:
            raise MedtuneError(f"rewrites must be at least 1, got {rewrites}")
        if questions < 0:
            raise MedtuneError(f"questions must be at least 0, got {questions}")
        if not 0.0 <= min_coverage <= 1.0:
            raise MedtuneError(f"min_coverage must be between 0 and 1, got {min_coverage}")
        super().__init__(endpoint, model, api_key=api_key, concurrency=concurrency,
                         retries=retries, backoff=backoff, timeout=timeout, cache_dir=cache_dir,
                         temperature=temperature, lang=lang, min_support=min_support,
                         cache_extra=("rewrite", rewrites, questions), transport=transport)
        self.rewrites, self.questions = rewrites, questions
        self.min_coverage, self.keep_original = min_coverage, keep_original

    def _prompt(self, text: str) -> list[dict]:
        lang = self._language(text)
        template = _PROMPTS[lang]
        if not self.questions:  # no second task: say so instead of asking for 0 pairs
            template = template.replace("完成两项任务" if lang == "zh" else "do two things",
                                        "完成第1项任务" if lang == "zh" else "do task 1 only")
        return [{"role": "user", "content": template.format(n=self.rewrites, q=self.questions,
                                                            passage=text)}]

    def _parse(self, content: str):
        return parse_rewrite_reply(content, self.rewrites, self.questions)

    def _rewrite_verdict(self, rewrite: str, text: str, units: set[str], seen: set[str]) -> str:
        """``"kept"`` or the count a refused rewrite goes to."""
        key = normalize_text(rewrite)
        if key in seen:
            return "duplicate_rewrites"
        if support(rewrite, units) < self.min_support:
            return "ungrounded_rewrites"
        if coverage(rewrite, units) < self.min_coverage:
            return "incomplete_rewrites"
        if len(rewrite) > MAX_GROWTH * len(text):
            return "long_rewrites"
        seen.add(key)
        return "kept"

    def _grounded(self, passage_id: str, text: str, parsed) -> JobOutcome:
        texts, pairs = parsed
        counts = Counter(rewrites_generated=len(texts), pairs_generated=len(pairs),
                         surplus=max(len(texts) - self.rewrites, 0) + max(len(pairs) - self.questions, 0))
        texts, pairs = texts[:self.rewrites], pairs[:self.questions]
        units, seen = set(content_units(text)), {normalize_text(text)}
        records = [{"text": text, "id": passage_id}] if self.keep_original else []
        for rewrite in texts:
            verdict = self._rewrite_verdict(rewrite, text, units, seen)
            counts[verdict if verdict != "kept" else "rewrites_kept"] += 1
            if verdict == "kept":
                records.append({"text": rewrite, "id": f"{passage_id}~{counts['rewrites_kept']}",
                                "source": "rewrite", "passage_id": passage_id})
        counts["short"] = int(counts["rewrites_kept"] < self.rewrites)
        qa = grounded_qa_records(pairs, text, self.min_support, "rewrite-qa", passage_id)
        counts.update(pairs_kept=len(qa), ungrounded_pairs=len(pairs) - len(qa))
        return JobOutcome(records + qa, counts)
