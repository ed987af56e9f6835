"""The tiny model's locally trained tokenizer: word-segmented merges (``segment: jieba``)."""

from __future__ import annotations

import pytest

from medtune.demo.kb import STATEMENTS, build_demo_data, load_kb
from medtune.errors import MedtuneError
from medtune.models.tiny import train_tokenizer


def _inside(part: list[int], whole: list[int]) -> bool:
    return any(whole[i:i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def _kept_whole(tok) -> dict:
    """Per relation, how many of the 100 diseases' values have the same token ids alone and inside
    every pretraining phrasing of their fact; under "name", the diseases whose name does."""
    ids = lambda text: tok(text)["input_ids"]  # noqa: E731
    kb = load_kb()
    kept = {rel: sum(all(_inside(ids(r[rel]), ids(p.format(d=r["disease"], v=r[rel]))) for p in phrasings) for r in kb)
            for rel, phrasings in STATEMENTS.items()}
    kept["name"] = sum(all(_inside(ids(r["disease"]), ids(p.format(d=r["disease"], v=r[rel])))
                           for rel, phrasings in STATEMENTS.items() for p in phrasings) for r in kb)
    return kept


@pytest.fixture(scope="module")
def corpus():
    return build_demo_data(seed=0).corpus


def test_plain_bpe_fuses_values_with_their_phrase(corpus):
    # what the segmented tokenizer exists for: on this repetitive corpus plain BPE learns whole
    # phrases ("应到皮肤科就诊"), so a department is never the same tokens in its sentences as alone
    kept = _kept_whole(train_tokenizer(corpus, 1500))
    assert kept["department"] == 0 and kept["name"] <= 60, kept


def test_jieba_segmented_merges_keep_values_and_names_whole(corpus):
    tok = train_tokenizer(corpus, 1500, segment="jieba")
    assert len(tok) == 1500
    kept = _kept_whole(tok)  # measured: 100 / 100 / 97 / 100 values, 90 names
    assert min(kept[rel] for rel in STATEMENTS) >= 95 and kept["name"] >= 85, kept
    for text in corpus[:50]:  # still lossless byte-level BPE
        assert tok.decode(tok(text)["input_ids"]) == text


def test_unknown_segmenter_is_one_line_error(corpus):
    with pytest.raises(MedtuneError, match="segment must be one of none, jieba, got 'spacy'"):
        train_tokenizer(corpus[:10], 300, segment="spacy")
