"""ROUGE / BLEU exactly as ChatGLM P-Tuning v2 computes them: golden numbers on fixed zh / en
strings, the reference loop written out independently, and the empty-prediction case."""

from __future__ import annotations

import pytest

from medtune.evaluation.metrics import METRICS, average_scores, bleu4, rouge_scores, sample_scores

PAIRS = [  # (prediction, reference)
    ("高血压的典型症状是头痛头晕，应按时服药。", "高血压常见症状为头痛、头晕，需要遵医嘱按时服药。"),
    ("感冒应到呼吸内科就诊。", "感冒可以挂呼吸内科。"),
    ("Rest, drink fluids, and see a doctor if the fever lasts.",
     "Rest and drink plenty of fluids; see a doctor if the fever lasts more than three days."),
    ("Metformin is a first-line drug.", "Metformin is the first-line drug for type 2 diabetes."),
    ("", "多喝水，注意休息。"),
]

# Computed once with the reference loop below (jieba 0.42.1, rouge-chinese 1.0.3, nltk 3.10.4).
GOLDEN = [
    {"rouge-1": 61.5385, "rouge-2": 25.0, "rouge-l": 61.5385, "bleu-4": 27.5923},
    {"rouge-1": 61.5385, "rouge-2": 18.1818, "rouge-l": 61.5385, "bleu-4": 28.9978},
    {"rouge-1": 75.0, "rouge-2": 38.7097, "rouge-l": 66.6667, "bleu-4": 50.6811},
    {"rouge-1": 70.0, "rouge-2": 44.4444, "rouge-l": 70.0, "bleu-4": 43.942},
    {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0},
]
GOLDEN_MEAN = {"rouge-1": 53.6154, "rouge-2": 25.26718, "rouge-l": 51.94874, "bleu-4": 30.24264}


def reference_compute_metrics(preds, labels) -> dict:
    """THUDM/ChatGLM-6B ptuning/main.py compute_metrics, with the empty-text guard of its
    successors (the original raises ValueError on an empty prediction)."""
    import jieba
    import numpy as np
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(preds, labels):
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
            result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu_score = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu_score * 100, 4))
    return {k: float(np.mean(v)) for k, v in score_dict.items()}


@pytest.mark.parametrize("i", range(len(PAIRS)))
def test_per_sample_scores_match_golden_values(i):
    pred, ref = PAIRS[i]
    assert sample_scores(pred, ref) == pytest.approx(GOLDEN[i], abs=1e-9)


def test_average_matches_golden_and_the_reference_loop():
    ours = average_scores([sample_scores(p, r) for p, r in PAIRS])
    assert ours["n"] == len(PAIRS)
    ref = reference_compute_metrics([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for m in METRICS:
        assert ours[m] == pytest.approx(GOLDEN_MEAN[m], abs=1e-9)
        assert ours[m] == pytest.approx(ref[m], abs=1e-9)


def test_reference_script_without_guard_crashes_on_empty_prediction():
    """Why a guard is needed at all: rouge_chinese refuses an empty hypothesis."""
    from rouge_chinese import Rouge

    with pytest.raises(ValueError, match="Hypothesis is empty"):
        Rouge().get_scores("", "多 喝水")


@pytest.mark.parametrize("pred, ref", [("", "多喝水"), ("   ", "多喝水"), ("多喝水", "")])
def test_empty_text_scores_zero_and_counts_in_the_average(pred, ref):
    assert rouge_scores(pred, ref) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert bleu4(pred, ref) == 0.0
    avg = average_scores([sample_scores("多喝水", "多喝水"), sample_scores(pred, ref)])
    assert avg["n"] == 2 and avg["rouge-1"] == pytest.approx(50.0)


def test_identical_text_scores_100_and_differs_from_a_wrong_answer():
    same = sample_scores("高血压患者应低盐饮食并规律服药。", "高血压患者应低盐饮食并规律服药。")
    assert all(same[m] == pytest.approx(100.0) for m in METRICS)
    wrong = sample_scores("感冒挂呼吸科。", "高血压患者应低盐饮食并规律服药。")
    assert all(wrong[m] < 20 for m in METRICS)


def test_bleu_is_over_characters_and_rouge_over_jieba_words():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    pred, ref = "headache and high fever", "headache with high fever"
    smooth = SmoothingFunction().method3
    chars = round(sentence_bleu([list(ref)], list(pred), smoothing_function=smooth) * 100, 4)
    words = round(sentence_bleu([ref.split()], pred.split(), smoothing_function=smooth) * 100, 4)
    assert bleu4(pred, ref) == chars and chars != words
    pred, ref = "糖尿病患者需要控制血糖", "糖尿病人需要监测血糖"
    by_char = round(Rouge().get_scores(" ".join(pred), " ".join(ref))[0]["rouge-1"]["f"] * 100, 4)
    assert rouge_scores(pred, ref)["rouge-1"] == 44.4444 and by_char == 63.1579


def test_average_of_nothing_is_zero_with_n_zero():
    assert average_scores([]) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0, "n": 0}
