"""Record quality checks: language, empty / garbled / truncated / repetitive responses, length.

``medtune data clean`` drops every record for which :func:`check_record` returns a reason and
counts the reasons in its report.

>>> detect_language("发热三天，咳嗽。"), detect_language("Fever for three days."), detect_language("")
('zh', 'en', 'other')
>>> rec = {"messages": [{"role": "user", "content": "头痛怎么办？"},
...                     {"role": "assistant", "content": "建议您多喝水。" * 6}]}
>>> check_record(rec, QualityRules())
'repetitive'
>>> check_record(rec, QualityRules(check_repetitive=False, lang="en"))
'wrong language'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medtune.data.readers.records import prompt_text, record_shape, response_text
from medtune.errors import MedtuneError

__all__ = [
    "QualityRules",
    "check_record",
    "check_tokens",
    "detect_language",
    "is_garbled",
    "is_repetitive",
    "is_truncated",
    "repeat_ratio",
    "token_lengths",
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """'zh' when CJK characters are at least 30% of the letters, 'en' when Latin letters dominate,
    'other' when the text has neither (empty, digits, other scripts)."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return "other"
    # A Chinese sentence spends one character per word, English about five letters: weigh accordingly.
    return "zh" if cjk * 5 >= 0.3 * (cjk * 5 + latin) else "en"


@dataclass
class QualityRules:
    """What :func:`check_record` rejects. Lengths count visible characters of the response."""

    min_chars: int = 1
    max_chars: int | None = None
    # A prompt shorter than this is reported as "empty prompt"; one with no visible text always is.
    min_prompt_chars: int = 0
    # "zh" or "en": keep only records whose prompt + response is in this language.
    lang: str | None = None
    check_garbled: bool = True
    check_truncated: bool = True
    check_repetitive: bool = True
    # Highest tolerated share of the response (characters for Chinese, words for English) lying in
    # a 10-character / 5-word n-gram already seen earlier in it (see repeat_ratio). Real medical
    # answers stay under 0.3 (99.9% under 0.22); one pasted twice is ~0.5, a loop goes toward 1.
    max_repeat_ratio: float = 0.3

    def __post_init__(self):
        if self.lang not in (None, "zh", "en"):
            raise MedtuneError(f"quality rules: lang {self.lang!r} is not one of zh, en")
        if not 0 <= self.max_repeat_ratio <= 1:
            raise MedtuneError(
                f"quality rules: max_repeat_ratio {self.max_repeat_ratio} not in 0..1"
            )


# --- garbled -------------------------------------------------------------------------------

_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u2060\ufeff]+")
_MOJIBAKE_WORDS = ("锟斤拷", "烫烫烫", "屯屯屯")
# UTF-8 bytes read as Latin-1 / cp1252: a lead byte in À..ô followed by continuation bytes.
_CP1252_HIGH = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_LATIN1_RUN = re.compile(f"[\u00c2-\u00f4][\u0080-\u00bf{_CP1252_HIGH}]+")
# UTF-8 Chinese read as GBK: runs of CJK that re-encode to valid UTF-8 Chinese.
_CJK_RUN = re.compile(r"[\u3400-\u9fff\u3000-\u303f\uff00-\uffef]{4,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ue000-\uf8ff]")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{100,}={0,2}")
_SYMBOL = re.compile(r"[^\w\s]|_")
_CODE_FENCE = re.compile(r"```.*?(```|\Z)", re.DOTALL)


def _latin1_bytes(run: str) -> bytes | None:
    """The bytes a Latin-1 / cp1252 decoder turned into ``run``, None if it could not have."""
    try:
        return bytes(ord(c) if ord(c) < 256 else c.encode("cp1252")[0] for c in run)
    except UnicodeEncodeError:
        return None


def _decodes_as_utf8(data: bytes | None) -> bool:
    try:
        return data is not None and bool(data.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def _has_latin1_mojibake(text: str) -> bool:
    """True when some À..ô run is really UTF-8 read as Latin-1 ('Ã©' -> 'é', 'â€™' -> '’')."""
    return any(_decodes_as_utf8(_latin1_bytes(m.group())) for m in _LATIN1_RUN.finditer(text))


def _has_gbk_mojibake(text: str) -> bool:
    """True when a run of CJK is really UTF-8 Chinese read as GBK ('鍖荤敓' -> '医生'): its GBK
    bytes decode as UTF-8 to mostly CJK. Real Chinese in GBK is almost never valid UTF-8."""
    for run in _CJK_RUN.findall(text):
        try:
            decoded = run.encode("gbk").decode("utf-8", errors="replace")
        except UnicodeEncodeError:  # characters outside GBK: not GBK mojibake
            continue
        cjk = len(_CJK.findall(decoded))
        if cjk >= 2 and cjk >= 2 * decoded.count("\ufffd"):
            return True
    return False


def _word_char_ratio(text: str) -> float:
    """Share of letters and digits among the visible characters outside code fences."""
    visible = _INVISIBLE.sub("", _CODE_FENCE.sub("", text) if "```" in text else text)
    return 1 - len(_SYMBOL.findall(visible)) / len(visible) if visible else 1.0


def is_garbled(text: str) -> bool:
    """True for text that went through a broken decoder or is not prose: U+FFFD, mojibake,
    control / private-use characters, base64 blobs, or a long text that is mostly symbols."""
    if "\ufffd" in text or any(w in text for w in _MOJIBAKE_WORDS):
        return True
    if _has_latin1_mojibake(text) or _has_gbk_mojibake(text):
        return True
    if len(_CONTROL.findall(text)) > max(2, len(text) // 100):
        return True
    if _BASE64_RUN.search(_CODE_FENCE.sub("", text)):
        return True
    # Tables, lab values and formulas keep well above a third letters/digits; symbol runs do not.
    return len(text) >= 100 and _word_char_ratio(text) < 0.3


# --- truncated -----------------------------------------------------------------------------

# Not ";"/"；": Chinese lists end every item with one, the last included (HuaTuo, real doctors).
_DANGLING_PUNCT = "，、,：:"
# "a" only in lower case: "hepatitis A", "vitamin A" end complete answers.
_EN_CONNECTORS = re.compile(r"(?:^|\W)((?i:and|or|the|of|with|an|but|because|including)|a)$")
_ZH_CONNECTORS = re.compile("(以及|或者|并且|而且|但是|只是|因为|所以|如果|包括|例如|比如)$")
# Words ending in 和 that are complete ("温和", "缓和"): 和 is a connector only after other chars.
_HE_WORDS = set("温缓柔平中饱调总祥谦随暖融共附")
_ELLIPSIS = re.compile(r"(\.{3,}|…+)$")
# "等……" / "etc..." leave an enumeration open on purpose, "。……" trails off after a full sentence.
_ELLIPSIS_OK = re.compile(r"(等|etc\.?|[。！？.!?])$", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(\d+[.、)）]|[（(]\d+[)）]|[一二三四五六七八九十]+、|[-*•])\s*$")
# Half- and full-width brackets are mixed freely in Chinese text ("（LH)"), so either closes either.
_BRACKETS = (("(（", ")）"), ("[【", "]】"), ("《", "》"), ("“", "”"), ("「", "」"), ("{", "}"))
_OPEN_QUOTE = re.compile(r'(?:^|(?<=[\s(（:：]))"(?=\S)')
_SENTENCE_END = re.compile(r"[。！？!?\n]|\.\s")
_TERMINAL = "。！？.!?"


def _ends_with_connector(text: str) -> bool:
    if text[-1] in _DANGLING_PUNCT or _EN_CONNECTORS.search(text[-16:]):
        return True
    if _ZH_CONNECTORS.search(text[-4:]):
        return True
    return text.endswith("和") and len(text) > 1 and text[-2] not in _HE_WORDS


def _ends_with_cut_ellipsis(text: str) -> bool:
    match = _ELLIPSIS.search(text)
    return bool(match) and not _ELLIPSIS_OK.search(text[: match.start()].rstrip())


def _last_unclosed(text: str, openers: str, closers: str) -> int:
    """Position of the last opener after the last closer, -1 when every bracket is closed."""
    last_open = max(text.rfind(c) for c in openers)
    return last_open if last_open > max(text.rfind(c) for c in closers) else -1


def _cut_inside_bracket(text: str) -> bool:
    """True when a code fence is left open, or the text stops mid-sentence inside a bracket / quote
    it opened. An opener whose closer was lost earlier in the text is damage, not a cut."""
    if text.count("```") % 2:
        return True
    if text[-1] in _TERMINAL:
        return False
    starts = [_last_unclosed(text, o, c) for o, c in _BRACKETS]
    if text.count('"') % 2:
        starts.append(max((m.start() for m in _OPEN_QUOTE.finditer(text)), default=-1))
    start = max(starts)
    return start >= 0 and not _SENTENCE_END.search(text, start + 1)


def is_truncated(text: str) -> bool:
    """True when the answer looks cut off: it ends on a comma or connector word, inside an open
    bracket / quote / code fence, on a bare list number ("3."), or on an ellipsis that does not
    close an enumeration. Short answers without final punctuation ("是的", "Yes") pass."""
    text = text.rstrip()
    if not text:
        return False
    last_line = text.rsplit("\n", 1)[-1]
    return (
        _ends_with_connector(text)
        or _ends_with_cut_ellipsis(text)
        or _cut_inside_bracket(text)
        or bool(_LIST_MARKER.match(last_line))
    )


# --- repetitive ----------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_NON_WORD = re.compile(r"[\W_]+")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_CHAR_NGRAM, _WORD_NGRAM = 10, 5


def _duplicate_units(grams: list, n: int) -> int:
    """How many units under ``grams`` (the n-grams starting at each unit) lie inside an n-gram
    that already occurred earlier."""
    if len(set(grams)) == len(grams):  # the common case, and the cheap test: nothing repeats
        return 0
    first_seen = {gram: i for i, gram in reversed(list(enumerate(grams)))}
    covered = covered_end = 0
    for i, gram in enumerate(grams):
        if first_seen[gram] != i:
            covered += i + n - max(covered_end, i)
            covered_end = i + n
    return covered


def _repeated(text: str) -> tuple[int, int, int]:
    """``(repeated units, all units, n)``: characters and 10-grams for Chinese and other
    non-English text, lower-cased words and 5-grams for English. Only letters and digits count;
    code fences and URLs are skipped."""
    # Code, markdown links ([url](url)) and table rules repeat by nature; a loop shows in words.
    text = _URL.sub("", _CODE_FENCE.sub("", text) if "```" in text else text)
    if detect_language(text) == "en":
        units, n = _WORD.findall(text.lower()), _WORD_NGRAM
        grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    else:
        units, n = _NON_WORD.sub("", text), _CHAR_NGRAM
        grams = [units[i : i + n] for i in range(len(units) - n + 1)]
    return _duplicate_units(grams, n), len(units), n


def repeat_ratio(text: str) -> float:
    """Share of the text repeating itself: the characters (Chinese) or words (English) inside a
    10-character / 5-word n-gram seen earlier in the text. 0 without repeats, near 1 for a loop."""
    repeated, total, _ = _repeated(text)
    return repeated / total if total else 0.0


def is_repetitive(text: str, max_ratio: float = 0.3) -> bool:
    """True for the degenerate loop of generated data: :func:`repeat_ratio` above ``max_ratio``
    and at least 20 characters / 10 words repeated. A shorter repeat is a term said twice, which
    short answers do ("Bruton酪氨酸激酶（BTK）缺陷所致，为Bruton酪氨酸激酶基因突变所致")."""
    repeated, total, n = _repeated(text)
    return repeated >= 2 * n and repeated > max_ratio * total


# --- whole records -------------------------------------------------------------------------


def _visible_len(text: str) -> int:
    return len(_INVISIBLE.sub("", text))


def _prompt_problem(rec: dict, shape: str, rules: QualityRules) -> str | None:
    """'empty prompt' when the user side has no visible text or fewer than min_prompt_chars."""
    if shape == "text":
        return None
    prompt = rec["question"] if shape == "choice" else prompt_text(rec)
    n = _visible_len(prompt)
    return "empty prompt" if n == 0 or n < rules.min_prompt_chars else None


def _response_problem(response: str, rules: QualityRules) -> str | None:
    """The first length / content reason the response fails, or None."""
    n = _visible_len(response)
    if n == 0:
        return "empty response"
    if n < rules.min_chars:
        return "too short"
    if rules.max_chars is not None and n > rules.max_chars:
        return "too long"
    return None


def _content_problem(prompt: str, response: str, rules: QualityRules) -> str | None:
    if rules.check_garbled and (is_garbled(response) or is_garbled(prompt)):
        return "garbled"
    if rules.check_truncated and is_truncated(response):
        return "truncated"
    if rules.check_repetitive and is_repetitive(response, rules.max_repeat_ratio):
        return "repetitive"
    return None


def check_record(rec: dict, rules: QualityRules) -> str | None:
    """The first reason ``rec`` fails ``rules`` or None. Reasons, in the order checked:
    "empty response", "too short", "too long", "empty prompt", "garbled", "truncated",
    "repetitive", "wrong language". Garbled looks at prompt and response (mojibake in either
    spoils the pair), truncated and repetitive at the response. Choice records only get the
    question and language checks; prompt-only records have no response to check."""
    shape = record_shape(rec)
    prompt, response = prompt_text(rec), response_text(rec)
    has_response = shape not in ("choice", "prompt")
    reason = (_response_problem(response, rules) if has_response else None) or _prompt_problem(
        rec, shape, rules
    )
    if reason is None and has_response:
        reason = _content_problem(prompt, response, rules)
    if reason is None and rules.lang and detect_language(prompt + "\n" + response) != rules.lang:
        reason = "wrong language"
    return reason


# --- tokens --------------------------------------------------------------------------------


def token_lengths(texts: list[str], tokenizer, batch_size: int = 1000) -> list[int]:
    """Token counts of ``texts`` without special tokens, tokenized in batches."""
    lengths: list[int] = []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        lengths.extend(len(row) for row in ids)
    return lengths


def check_tokens(n: int, max_tokens: int | None) -> str | None:
    """'too many tokens' when ``n`` exceeds ``max_tokens`` (None: no limit)."""
    return "too many tokens" if max_tokens is not None and n > max_tokens else None
