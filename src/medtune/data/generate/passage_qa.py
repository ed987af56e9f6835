"""Passages → Q&A pairs grounded in them, written by an LLM behind an OpenAI-compatible endpoint.

>>> pairs = parse_qa_pairs('[{"question": "糖尿病有哪些症状？", "answer": "多饮、多尿。"}]')
>>> pairs
[('糖尿病有哪些症状？', '多饮、多尿。')]
>>> support(pairs[0][1], set(content_units("糖尿病的典型症状为多饮、多尿、多食。")))
1.0

With a server at http://127.0.0.1:8000/v1 (e.g. ``vllm serve`` or ``medtune serve``)::

    gen = PassageQAGenerator("http://127.0.0.1:8000/v1", "qwen", cache_dir=Path("runs/qa-cache"))
    records = list(gen.run(read_passages("textbook.txt")))
    print(gen.summary)   # passages, requests, cache_hits, failed, pairs_kept, tokens ...

Ziya TCM's knowledge-guided generation: :class:`PassageQAGenerator` asks the endpoint for Q&A
pairs about each passage and keeps a pair only when :func:`support` says the passage backs its
answer. Records are unified ``messages`` records (see :mod:`medtune.data.readers.formats`); this is
``medtune data generate passage``.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data.clean.quality import detect_language
from medtune.data.generate.kg import (
    OnSkip,
    _BadRow,
    _check_lang,
    _is_jsonl,
    _json_object,
    _read_text,
    _report,
)
from medtune.errors import MedtuneError
from medtune.files import numbered_lines
from medtune.llm_client import (
    ChatClient,
    RequestFailed,
    Transport,
    UnparsableReply,
    reply_json,
    urllib_transport,
)

__all__ = [
    "PROMPT_VERSION",
    "JobOutcome",
    "PassageJob",
    "PassageQAGenerator",
    "UnparsableReply",
    "content_units",
    "grounded_qa_records",
    "parse_qa_pairs",
    "read_passages",
    "support",
    "urllib_transport",
]

# --- passages --------------------------------------------------------------------------------


def _paragraphs(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, stripped lines)`` of each run of non-blank lines."""
    start, block = 0, []
    for n, line in enumerate(lines, 1):
        if line.strip():
            start = start or n
            block.append(line.strip())
        elif block:
            yield start, block
            start, block = 0, []
    if block:
        yield start, block


def _text_passages(path: Path, text: str) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)``: blank-line-separated paragraphs, or each line if none are blank."""
    blocks = list(_paragraphs(text.split("\n")))
    if len(blocks) == 1:  # no blank line anywhere: each line is a passage
        start, block = blocks[0]
        blocks = [(start + i, [line]) for i, line in enumerate(block)]
    for start, block in blocks:
        yield start, f"{path.name}:{start}", "\n".join(block)


def _jsonl_passages(path: Path, text: str, on_skip: OnSkip | None):
    """``(line, id, text)`` per JSONL row with a ``text``; ``id`` defaults to ``file:line``."""
    for line, raw in numbered_lines(text):
        try:
            record = _json_object(raw)
            if not isinstance(record.get("text"), str):
                raise _BadRow('field "text" missing' if "text" not in record
                              else 'field "text" must be a string')
            pid = record.get("id")
            yield line, (f"{path.name}:{line}" if pid is None else str(pid)), record["text"].strip()
        except _BadRow as e:
            _report(path, line, str(e), on_skip)


def read_passages(path, min_chars: int = 50,
                  on_skip: OnSkip | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(passage_id, text)`` from a .txt file or JSONL with ``text`` (and optional ``id``).

    Text files: blank-line-separated paragraphs (lines joined with newlines), or one passage per
    line when the file has no blank lines; ids are ``file:line`` of the passage's first line.
    Passages shorter than ``min_chars`` are skipped, reported through ``on_skip`` when given; a bad
    JSONL row raises ``file:line: ...`` or goes to ``on_skip``.
    """
    path = Path(path)
    text = _read_text(path)
    if _is_jsonl(path, text):
        rows = _jsonl_passages(path, text, on_skip)
    else:
        rows = _text_passages(path, text)
    for line, pid, body in rows:
        if len(body) >= min_chars:
            yield pid, body
        elif on_skip is not None:
            on_skip(line, f"passage shorter than {min_chars} characters")


# --- grounding -------------------------------------------------------------------------------

_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[0-9a-z]+(?:['’.\-][0-9a-z]+)*")
_STOP_UNITS = frozenset({
    "的", "了", "是", "在", "和", "与", "及", "或", "等", "也", "都", "而", "其", "之",
    "a", "an", "the", "of", "and", "or", "to", "in", "on", "at", "by", "for", "with", "as", "is",
    "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "from",
})


def content_units(text: str) -> list[str]:
    """The units grounding compares: CJK characters one by one, lower-cased Latin words and
    numbers; punctuation and stop words dropped."""
    return [u for u in _UNIT.findall(text.lower()) if u not in _STOP_UNITS]


def support(answer: str, passage_units: set[str]) -> float:
    """The fraction of the answer's content units found in the passage (0.0 for no units)."""
    units = content_units(answer)
    return sum(u in passage_units for u in units) / len(units) if units else 0.0


# --- prompts and replies ---------------------------------------------------------------------

PROMPT_VERSION = 1  # part of the cache key: bump when the prompt text changes
_PROMPTS = {
    "zh": (
        "请阅读<passage>标签中的医学资料，编写{n}个问答对。\n要求：\n"
        "1. 问题是患者或医学生可能会问的自然问题；\n"
        "2. 答案只能依据资料中的内容，不要添加资料以外的信息，尽量沿用资料原文的表述；\n"
        '3. 只输出一个JSON数组，格式为[{{"question": "...", "answer": "..."}}]，'
        "不要输出其他文字。\n\n"
        "<passage>\n{passage}\n</passage>"
    ),
    "en": (
        "Read the medical text in the <passage> tags and write {n} question-answer pairs.\n"
        "Rules:\n1. Questions are natural questions a patient or medical student might ask.\n"
        "2. Answers use only information stated in the passage, preferably in its own words; add "
        "nothing from outside it.\n"
        '3. Output only a JSON array, [{{"question": "...", "answer": "..."}}], and no other text.'
        "\n\n<passage>\n{passage}\n</passage>"
    ),
}


def parse_qa_pairs(content: str) -> list[tuple[str, str]]:
    """``[(question, answer)]`` from a reply that is a JSON list of {"question", "answer"}
    (a ```json fence is tolerated); raises UnparsableReply naming what is wrong."""
    items = reply_json(content, list)
    pairs = []
    for i, item in enumerate(items, 1):
        for key in ("question", "answer"):
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise UnparsableReply(f'item {i} has no "{key}" string')
        pairs.append((item["question"].strip(), item["answer"].strip()))
    return pairs


# --- passage → grounded Q&A ------------------------------------------------------------------


@dataclass
class JobOutcome:
    """What one passage gave: the records kept, counts (``Counter``) and a failure, if any."""

    records: list[dict]
    counts: Counter = field(default_factory=Counter)
    failure: RequestFailed | None = None


class PassageJob:
    """Asks an OpenAI-compatible ``/chat/completions`` one request per passage and keeps what the
    passage grounds; subclasses say what to ask (:meth:`_prompt`), how to read the reply
    (:meth:`_parse`, raising UnparsableReply) and what to keep (:meth:`_grounded`).

    Requests run on ``concurrency`` threads; records come out in input order. Connection errors,
    timeouts, HTTP 429/5xx and unparsable replies are retried ``retries`` times with exponential
    backoff and jitter (``Retry-After`` honoured); after that the passage is counted as failed
    with its reason (also listed in :attr:`failures`). HTTP 401/403/404 stop the run with a
    :class:`MedtuneError` since every request would fail; other 4xx fail the passage at once.
    With ``cache_dir`` every parsed reply is stored as it arrives, so a rerun pays only for what
    is missing. The HTTP, retry and cache work is :class:`medtune.llm_client.ChatClient`'s.
    """

    COUNTS: tuple[str, ...] = ("passages", "failed")  # the counts :attr:`summary` reports

    def __init__(self, endpoint: str, model: str, api_key: str | None = None,
                 concurrency: int = 4, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 60.0, cache_dir: Path | None = None, temperature: float = 0.7,
                 lang: str = "auto", min_support: float = 0.6, cache_extra: tuple = (),
                 transport: Transport | None = None):
        if concurrency < 1:
            raise MedtuneError(f"concurrency must be at least 1, got {concurrency}")
        if not 0.0 <= min_support <= 1.0:
            raise MedtuneError(f"min_support must be between 0 and 1, got {min_support}")
        self.client = ChatClient(endpoint, model, api_key=api_key, retries=retries,
                                 backoff=backoff, timeout=timeout, cache_dir=cache_dir,
                                 temperature=temperature, cache_version=PROMPT_VERSION,
                                 cache_extra=cache_extra, transport=transport)
        self.concurrency, self.lang, self.min_support = concurrency, _check_lang(lang), min_support
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.client.reset()
        self._counts: Counter = Counter()
        self._failed_reasons: Counter = Counter()
        self.failures: list[tuple[str, str]] = []  # (passage_id, "reason: detail")

    @property
    def summary(self) -> dict:
        """Counts for the last :meth:`run`: passages (finished), failed + failed_reasons, the
        subclass's :attr:`COUNTS`, requests (HTTP attempts sent), cache_hits, and tokens:
        prompt/completion tokens paid, saved_tokens served from the cache instead."""
        with self._lock:
            out = {name: self._counts[name] for name in self.COUNTS}
            out["failed_reasons"] = dict(self._failed_reasons)
        return {**out, **self.client.usage}

    def _language(self, text: str) -> str:
        lang = self.lang if self.lang != "auto" else detect_language(text)
        return "zh" if lang == "zh" else "en"

    # -- what a subclass says -----------------------------------------------------------------

    def _prompt(self, text: str) -> list[dict]:
        raise NotImplementedError

    def _parse(self, content: str):
        raise NotImplementedError

    def _grounded(self, passage_id: str, text: str, parsed) -> JobOutcome:
        raise NotImplementedError

    # -- one passage --------------------------------------------------------------------------

    def _process(self, passage: tuple[str, str]) -> JobOutcome:
        """The outcome of one ``(passage_id, text)`` (runs on a worker thread)."""
        passage_id, text = passage
        try:
            parsed = self.client.complete(self._prompt(text), parse=self._parse)
        except RequestFailed as e:
            return JobOutcome([], failure=e)
        return self._grounded(passage_id, text, parsed)

    def _tally(self, passage_id: str, outcome: JobOutcome) -> None:
        with self._lock:
            self._counts.update(outcome.counts)
            self._counts.update(passages=1, failed=int(outcome.failure is not None))
            if outcome.failure is not None:
                self._failed_reasons[outcome.failure.reason] += 1
                self.failures.append((passage_id, str(outcome.failure)))

    def run(self, passages: Iterable[tuple[str, str]],
            progress: Callable[[str], None] | None = None) -> Iterator[dict]:
        """Yield the records kept for each passage, in input order.

        ``passages`` are ``(passage_id, text)`` pairs (see :func:`read_passages`);
        ``progress(passage_id)`` is called once per finished passage. Counts for this run are in
        :attr:`summary` and failed passages in :attr:`failures` once the iterator is exhausted.
        Closing the iterator early waits for the requests in flight, whose replies are cached.
        """
        self._reset()
        for (passage_id, _), outcome in self.client.map_ordered(self._process, passages,
                                                                 self.concurrency):
            self._tally(passage_id, outcome)
            yield from outcome.records
            if progress is not None:
                progress(passage_id)


class PassageQAGenerator(PassageJob):
    """Writes Q&A pairs grounded in passages (``medtune data generate passage``).

    A pair is kept when :func:`support` of its answer is at least ``min_support``; records are
    ``messages`` records with ``source`` "passage" and ``passage_id``. :attr:`summary` adds
    pairs_generated, pairs_kept and ungrounded. Retries, cache and failures: :class:`PassageJob`.
    """

    COUNTS = ("passages", "failed", "pairs_generated", "pairs_kept", "ungrounded")

    def __init__(self, endpoint: str, model: str, api_key: str | None = None,
                 questions_per_passage: int = 3, concurrency: int = 4, retries: int = 4,
                 backoff: float = 1.0, timeout: float = 60.0, cache_dir: Path | None = None,
                 temperature: float = 0.7, lang: str = "auto", min_support: float = 0.6,
                 transport: Transport | None = None):
        if questions_per_passage < 1:
            raise MedtuneError(f"questions_per_passage must be at least 1, got {questions_per_passage}")
        super().__init__(endpoint, model, api_key=api_key, concurrency=concurrency,
                         retries=retries, backoff=backoff, timeout=timeout, cache_dir=cache_dir,
                         temperature=temperature, lang=lang, min_support=min_support,
                         cache_extra=(questions_per_passage,), transport=transport)
        self.questions_per_passage = questions_per_passage

    def _prompt(self, text: str) -> list[dict]:
        template = _PROMPTS[self._language(text)]
        return [{"role": "user", "content": template.format(n=self.questions_per_passage,
                                                            passage=text)}]

    def _parse(self, content: str) -> list[tuple[str, str]]:
        return parse_qa_pairs(content)

    def _grounded(self, passage_id: str, text: str, pairs: list[tuple[str, str]]) -> JobOutcome:
        """Records for the pairs whose answer the passage supports."""
        records = grounded_qa_records(pairs, text, self.min_support, "passage", passage_id)
        return JobOutcome(records, Counter(pairs_generated=len(pairs), pairs_kept=len(records),
                                           ungrounded=len(pairs) - len(records)))


def grounded_qa_records(pairs: list[tuple[str, str]], text: str, min_support: float,
                        source: str, passage_id: str) -> list[dict]:
    """``messages`` records of the ``(question, answer)`` pairs whose answer ``text`` supports
    (:func:`support` at least ``min_support``)."""
    passage_units = set(content_units(text))
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
             "source": source, "passage_id": passage_id}
            for q, a in pairs if support(a, passage_units) >= min_support]
