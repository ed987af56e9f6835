"""Sliding-window perplexity: window coverage, golden equalities against plain forwards, and
invariance to the batch size."""

from __future__ import annotations

import math

import pytest

from medtune.errors import MedtuneError
from medtune.evaluation.perplexity import (
    check_window,
    perplexity_by_file,
    sequence_nll,
    stream_ids,
    window_spans,
)

TEXTS = {
    "a.txt": ["高血压的典型症状是头痛头晕。" * 6, "糖尿病的一线用药是二甲双胍。" * 4],
    "b.txt": ["感冒应到呼吸内科就诊。"],
    "c.txt": ["Rest, drink fluids, and see a doctor if the fever lasts. " * 3],
}


@pytest.mark.parametrize("n, window, stride", [(10, 4, 2), (10, 4, 4), (11, 4, 3), (3, 8, 4), (50, 7, 1),
                                               (2, 2, 1), (9, 5, 5)])
def test_every_token_is_scored_once_with_enough_context(n, window, stride):
    spans = window_spans(n, window, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    # only a chunk's first token goes unscored, and chunks exist only when stride == window
    assert scored == [t for t in range(1, n) if stride < window or t % window]
    for begin, end, first in spans:
        assert end - begin <= window and begin < first
        if stride < window and begin > 0:
            assert first - begin >= window - stride  # context of the first scored token


def _nll_of(model, ids, labels):
    """Summed NLL of a forward with HF ``labels`` (-100 ignored), and the tokens it scored."""
    import torch

    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    n = sum(1 for x in labels[1:] if x != -100)  # the model shifts labels by one
    return loss * n, n


def _streams(tokenizer):
    return [stream_ids(tokenizer, t) for t in TEXTS.values()]


def test_stride_equal_to_window_is_the_plain_per_chunk_computation(tiny):
    model, tok = tiny
    window = 16
    for ids, (nll, n) in zip(_streams(tok), sequence_nll(model, _streams(tok), window, window, batch_size=4)):
        chunks = [ids[i:i + window] for i in range(0, len(ids), window)]
        plain = [_nll_of(model, c, c) for c in chunks if len(c) > 1]
        assert n == sum(k for _, k in plain)
        assert nll == pytest.approx(sum(v for v, _ in plain), rel=1e-5)


def test_text_shorter_than_the_window_is_exp_mean_nll_of_one_forward(tiny):
    model, tok = tiny
    texts = {"b.txt": TEXTS["b.txt"]}
    ids = stream_ids(tok, texts["b.txt"])
    overall, per_file = perplexity_by_file(model, tok, texts, window=len(ids) + 5, stride=3)
    nll, n = _nll_of(model, ids, ids)
    assert per_file["b.txt"]["tokens"] == n == len(ids) - 1
    assert overall["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_strided_windows_match_the_documented_labels_formulation(tiny):
    """The transformers docs' loop: each window's labels hide all but the new tokens."""
    model, tok = tiny
    window, stride = 16, 5
    for ids, (nll, n) in zip(_streams(tok), sequence_nll(model, _streams(tok), window, stride)):
        want_nll, want_n, prev_end = 0.0, 0, 0
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            trg_len = end - prev_end
            chunk = ids[begin:end]
            labels = [-100] * (len(chunk) - trg_len) + chunk[len(chunk) - trg_len:]
            v, k = _nll_of(model, chunk, labels)
            want_nll, want_n, prev_end = want_nll + v, want_n + k, end
            if end == len(ids):
                break
        assert n == want_n == len(ids) - 1
        assert nll == pytest.approx(want_nll, rel=1e-5)


def test_result_does_not_depend_on_batch_size(tiny):
    model, tok = tiny
    runs = [perplexity_by_file(model, tok, TEXTS, window=24, stride=8, batch_size=b) for b in (1, 3, 64)]
    for overall, per_file in runs[1:]:
        assert overall["tokens"] == runs[0][0]["tokens"]
        assert overall["ppl"] == pytest.approx(runs[0][0]["ppl"], rel=1e-5)
        for name in TEXTS:
            assert per_file[name]["ppl"] == pytest.approx(runs[0][1][name]["ppl"], rel=1e-5)


def test_overall_is_token_weighted_over_files(tiny):
    model, tok = tiny
    overall, per_file = perplexity_by_file(model, tok, TEXTS, window=24, stride=8)
    tokens = sum(f["tokens"] for f in per_file.values())
    mean = sum(f["nll"] * f["tokens"] for f in per_file.values()) / tokens
    assert overall["tokens"] == tokens and overall["n"] == 4
    assert overall["ppl"] == pytest.approx(math.exp(mean), rel=1e-9)
    assert per_file["a.txt"]["n"] == 2 and per_file["a.txt"]["ppl"] > 1


def test_bos_is_prepended_when_the_tokenizer_has_one():
    class Tok:
        bos_token_id = 1

        def __call__(self, text, add_special_tokens):
            assert not add_special_tokens
            return {"input_ids": [ord(c) for c in text]}

    assert stream_ids(Tok(), ["ab", "c"]) == [1, 97, 98, 10, 10, 99]


@pytest.mark.parametrize("window, stride, max_pos, msg", [
    (1, 1, None, "too small"), (8, 0, None, "between 1 and"), (8, 9, None, "between 1 and"),
    (4096, 512, 2048, "exceeds the model's 2048 positions"),
])
def test_bad_windows_are_one_line_errors(window, stride, max_pos, msg):
    with pytest.raises(MedtuneError, match=msg):
        check_window(window, stride, max_pos)
