"""Exact keys, MinHash signatures and near-duplicate detection (medtune.data.clean.dedup)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from medtune.data.clean.dedup import (
    MinHasher,
    band_keys,
    estimate_jaccard,
    exact_key,
    jaccard,
    lsh_params,
    near_duplicates,
    normalize_text,
)

MEDICAL_CHARS = (
    "高血压糖尿病患者医生治疗药物症状检查诊断头痛发热咳嗽心脏肝肾功能血糖胰岛素手术感染炎症"
)
DISTINCT = [
    "高血压患者应低盐饮食，每日食盐摄入不超过五克，并规律服用降压药物。",
    "糖尿病患者需要定期监测空腹血糖和糖化血红蛋白，必要时注射胰岛素。",
    "急性阑尾炎的典型表现是转移性右下腹痛，伴有发热和白细胞升高。",
    "Metformin is the first-line oral drug for most adults with type 2 diabetes.",
    "Community-acquired pneumonia in adults is often treated with amoxicillin for five days.",
]


def _random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(MEDICAL_CHARS) for _ in range(length))


def _mutate(rng: random.Random, text: str, rate: float) -> str:
    return "".join(rng.choice(MEDICAL_CHARS) if rng.random() < rate else c for c in text)


def test_normalize_text_and_exact_key_golden():
    assert normalize_text("Hello,  World!") == "helloworld"
    assert normalize_text("高血压患者，每天　服用ＡＢＣ药物。") == "高血压患者每天服用abc药物"
    assert normalize_text("Ⅸ型 COVID‑19_test") == "ix型covid19test"
    assert exact_key("Hello,  World!").hex() == "80111601aa1c6a4f"
    assert exact_key("高血压患者，每天　服用ＡＢＣ药物。").hex() == "480c2a917cdb7c7c"
    assert exact_key("  ").hex() == "ef46db3751d8e999"


def test_signature_golden_and_shape():
    sig = MinHasher(num_perm=4).signature("高血压患者应低盐饮食")
    assert sig.dtype == np.uint32 and sig.shape == (4,)
    assert sig.tolist() == GOLDEN_SIGNATURE


GOLDEN_SIGNATURE = [21976745, 2088334496, 1084259860, 87513589]


def test_signatures_match_single_signature_and_normalisation():
    hasher = MinHasher(num_perm=32)
    texts = ["", "短", "高血压", "高血压患者应低盐饮食", "A b, C!", "x" * 300_000] + DISTINCT
    batch = hasher.signatures(texts)
    assert batch.shape == (len(texts), 32)
    for text, row in zip(texts, batch):
        assert np.array_equal(row, hasher.signature(text))
    assert np.array_equal(hasher.signature("Hello, World!"), hasher.signature("hello world"))


def test_empty_and_short_texts():
    hasher = MinHasher(num_perm=16, ngram=5)
    assert hasher.signature("").tolist() == [0xFFFFFFFF] * 16
    assert hasher.signature("！？ ").tolist() == [0xFFFFFFFF] * 16
    # a short text is one whole-text shingle: not the same as the 5-gram that starts with it
    assert estimate_jaccard(hasher.signature("abcd"), hasher.signature("abcde")) < 0.5
    assert jaccard("abcd", "abcd") == 1.0 and jaccard("", "") == 1.0 and jaccard("", "ab") == 0.0


def test_estimate_tracks_exact_jaccard():
    rng = random.Random(0)
    hasher = MinHasher(num_perm=128)
    exact, estimated = [], []
    for _ in range(300):
        a = _random_text(rng, rng.randint(40, 150))
        b = _mutate(rng, a, rng.choice([0.01, 0.03, 0.08, 0.2]))
        exact.append(jaccard(a, b))
        estimated.append(estimate_jaccard(hasher.signature(a), hasher.signature(b)))
    exact, errors = np.array(exact), np.array(estimated) - np.array(exact)
    assert exact.min() < 0.3 and exact.max() > 0.8  # the pairs span the range
    assert np.mean(np.abs(errors) <= 0.1) >= 0.97
    assert np.abs(errors).max() < 0.2 and abs(errors.mean()) < 0.01  # unbiased
    # binomial spread: independent permutations give z-scores with unit variance
    z = errors / np.sqrt(np.clip(exact * (1 - exact), 1e-3, None) / 128)
    assert 0.8 < z.std() < 1.2


def test_signatures_identical_in_another_process():
    texts = ["高血压患者应低盐饮食", "Metformin for type 2 diabetes", ""]
    code = (
        "import json, sys; from medtune.data.clean.dedup import MinHasher; "
        "print(json.dumps(MinHasher(num_perm=64, seed=3).signatures(json.loads(sys.argv[1]))"
        ".tolist()))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(texts)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == MinHasher(num_perm=64, seed=3).signatures(texts).tolist()
    assert MinHasher(num_perm=64, seed=4).signature(texts[0]).tolist() != json.loads(out.stdout)[0]


def test_lsh_params_golden_and_optimal():
    assert lsh_params(0.8, 128) == (9, 13)
    assert lsh_params(0.9, 128) == (5, 25)
    assert lsh_params(0.5, 128) == (25, 5)
    bands, rows = lsh_params(0.8, 64)
    assert bands * rows <= 64

    def error(b, r):  # independent midpoint-rule integrals of the two error areas
        lo = (np.arange(4000) + 0.5) / 4000 * 0.8
        hi = 0.8 + (np.arange(1000) + 0.5) / 1000 * 0.2
        fp = np.mean(1 - (1 - lo**r) ** b) * 0.8
        fn = np.mean((1 - hi**r) ** b) * 0.2
        return 0.5 * fp + 0.5 * fn

    best = min(error(b, r) for b in range(1, 65) for r in range(1, 64 // b + 1))
    assert error(bands, rows) <= best + 1e-6


def test_band_keys_equal_exactly_when_band_equal():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(3, 12), dtype=np.uint64).astype(np.uint32)
    sigs[1, :4] = sigs[0, :4]  # band 0 shared by rows 0 and 1
    sigs[2, 8:] = sigs[0, 8:]  # band 2 shared by rows 0 and 2
    keys = band_keys(sigs, bands=3, rows=4)
    assert keys.shape == (3, 3) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).tolist() == [True, False, False]
    assert (keys[0] == keys[2]).tolist() == [False, False, True]
    with pytest.raises(ValueError):
        band_keys(sigs, bands=4, rows=4)


def test_light_edits_are_near_duplicates_distinct_are_not():
    base = DISTINCT[0] + DISTINCT[1] + DISTINCT[2] + "如出现胸痛、呼吸困难等症状，应立即就医。"
    edited = base.replace("五克", "六克").replace("胰岛素", "胰岛素。")  # one char + punctuation
    appended = base + "注意休息。"
    texts = DISTINCT + [edited, appended, base]
    sigs = MinHasher().signatures(texts)
    assert jaccard(base, edited) > 0.85 and jaccard(base, appended) > 0.85
    assert near_duplicates(sigs, threshold=0.8).tolist() == [False] * 5 + [False, True, True]
    english = DISTINCT[3] + " " + DISTINCT[4]
    sigs = MinHasher().signatures([english, english.replace("five", "seven")])
    assert near_duplicates(sigs).tolist() == [False, True]


def _chain_signatures():
    """A ~ B (0.85), B ~ C (0.85), A vs C 0.70; columns 19..108 shared so buckets collide."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, 128, dtype=np.uint64).astype(np.uint32)
    b = a.copy()
    b[:19] = rng.integers(0, 2**32, 19, dtype=np.uint64)
    c = b.copy()
    c[109:] = rng.integers(0, 2**32, 19, dtype=np.uint64)
    return np.stack([a, b, c])


def test_chain_uses_earliest_kept_representative():
    sigs = _chain_signatures()
    assert estimate_jaccard(sigs[0], sigs[2]) < 0.8
    assert near_duplicates(sigs, threshold=0.8).tolist() == [False, True, False]
    # C's only match B is dropped, so C stays; with a lower threshold A ~ C too and C goes
    assert near_duplicates(sigs, threshold=0.65).tolist() == [False, True, True]
    # order decides: C first, then B (dup of C), then A (matches only the dropped B)
    assert near_duplicates(sigs[::-1].copy(), threshold=0.8).tolist() == [False, True, False]


def test_keep_mask_excludes_records():
    sigs = _chain_signatures()
    keep = np.array([False, True, True])
    assert near_duplicates(sigs, keep=keep).tolist() == [False, False, True]
    assert near_duplicates(sigs, keep=np.array([True, False, True])).tolist() == [False] * 3
    with pytest.raises(ValueError):
        near_duplicates(sigs, keep=np.array([True, False]))


def test_large_cluster_and_memmap(tmp_path):
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 2**32, size=(300, 64), dtype=np.uint64).astype(np.uint32)
    cluster = np.repeat(noise[:1], 40, axis=0)
    cluster[np.arange(40), rng.integers(0, 64, 40)] = 7  # each copy differs in one column
    sigs = np.concatenate([noise, cluster])
    expected = np.zeros(len(sigs), dtype=bool)
    expected[300:] = True  # every copy is a near dup of record 0
    assert np.array_equal(near_duplicates(sigs), expected)
    path = tmp_path / "sigs.u32"
    mapped = np.memmap(path, dtype=np.uint32, mode="w+", shape=sigs.shape)
    mapped[:] = sigs
    mapped.flush()
    readonly = np.memmap(path, dtype=np.uint32, mode="r", shape=sigs.shape)
    assert np.array_equal(near_duplicates(readonly), expected)


def test_no_candidates_and_empty_input():
    assert near_duplicates(np.zeros((0, 64), np.uint32)).tolist() == []
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 2**32, size=(2000, 64), dtype=np.uint64).astype(np.uint32)
    assert not near_duplicates(sigs).any()
    assert near_duplicates(sigs, keep=np.zeros(2000, bool)).tolist() == [False] * 2000
