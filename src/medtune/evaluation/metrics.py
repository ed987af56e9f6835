"""Generation metrics as ChatGLM P-Tuning v2 computes them: ROUGE-1/2/L F over jieba words, BLEU-4
over characters, each x100 and rounded to 4 places per sample, then averaged.

Example::

    from medtune.evaluation.metrics import average_scores, sample_scores
    s = sample_scores("高血压的典型症状是头痛。", "高血压常见症状为头痛头晕。")
    s["rouge-l"], s["bleu-4"]                       # per sample, in 0..100
    average_scores([s, sample_scores("", "发热")])   # {"rouge-1": ..., "bleu-4": ...}

The formulation (THUDM/ChatGLM-6B ``ptuning/main.py`` ``compute_metrics``), per sample:

- ROUGE: ``rouge_chinese.Rouge().get_scores(' '.join(jieba.cut(pred)), ' '.join(jieba.cut(ref)))``,
  F of rouge-1, rouge-2, rouge-l. jieba splits English into words and punctuation too, so one code
  path serves Chinese and English; nothing is lower-cased (the reference does not).
- BLEU-4: ``nltk sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)``
  — characters, for both languages.

Empty text: the original script calls rouge on every pair and crashes on an empty prediction
(``ValueError: Hypothesis is empty.``). Like its widely used successors (LLaMA-Factory's
``ComputeMetrics``), we score ROUGE 0 when the jieba words of the prediction or the reference are
all whitespace, and keep the sample: an empty reply is a model failure that must pull the average
down, not vanish from it. BLEU is computed as usual (nltk gives 0 for an empty hypothesis).
"""

from __future__ import annotations

import logging
from functools import lru_cache

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


@lru_cache(maxsize=1)
def _libs():
    """Import jieba / rouge_chinese / nltk once (they are the ``eval`` extra), jieba quiet."""
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as exc:
        from medtune.errors import MedtuneError

        raise MedtuneError(f"generation metrics need {exc.name}: pip install 'medtune[eval]'") from None
    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict" chatter
    return jieba, Rouge(), sentence_bleu, SmoothingFunction().method3


def rouge_scores(prediction: str, reference: str) -> dict:
    """Return ROUGE-1/2/L F x100 (rounded to 4 places) over jieba words; zeros for empty text."""
    jieba, rouge, _, _ = _libs()
    hyp = " ".join(jieba.cut(prediction))
    ref = " ".join(jieba.cut(reference))
    if not hyp.split() or not ref.split():
        return {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    result = rouge.get_scores(hyp, ref)[0]
    return {k: round(v["f"] * 100, 4) for k, v in result.items()}


def bleu4(prediction: str, reference: str) -> float:
    """Return character BLEU-4 x100 (rounded to 4 places), smoothing method3."""
    _, _, sentence_bleu, method3 = _libs()
    score = sentence_bleu([list(reference)], list(prediction), smoothing_function=method3)
    return float(round(score * 100, 4))


def sample_scores(prediction: str, reference: str) -> dict:
    """Return ``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}`` for one prediction, each in 0..100."""
    return {**rouge_scores(prediction, reference), "bleu-4": bleu4(prediction, reference)}


def average_scores(scores: list[dict]) -> dict:
    """Return the mean of each metric over per-sample ``scores`` (0.0 for none) and ``n``."""
    n = len(scores)
    means = {m: (sum(s[m] for s in scores) / n if n else 0.0) for m in METRICS}
    return {**means, "n": n}
