"""Dataset statistics: golden values on a hand-written set, token counts, the PNG and the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtune.data.stats import compute_stats, format_stats, plot_lengths
from medtune.errors import MedtuneError


def msgs(*pairs) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


# prompt / response characters are in the comments; the second record is the first with
# different case and punctuation, so an exact duplicate after normalisation.
RECORDS = [
    {"messages": msgs(("user", "abc"), ("assistant", "x" * 10)), "source": "a"},       # 3 / 10
    {"messages": msgs(("user", "ABC!"), ("assistant", "X" * 10)), "source": "a"},      # 4 / 10
    {"messages": msgs(("system", "sys"), ("user", "q1"), ("assistant", "ans1"),
                      ("user", "q2"), ("assistant", "ans2")), "source": "b"},          # 9 / 9
    {"text": "发热三天咳嗽"},                                                            # 0 / 6
    {"prompt": msgs(("user", "头痛怎么办")), "chosen": msgs(("assistant", "休息一下")),
     "rejected": msgs(("assistant", "不知道"))},                                         # 5 / 4
    {"question": "1+1?", "options": {"A": "2", "B": "3"}, "answer": "A"},              # 14 / 1
]


def test_stats_golden_values():
    stats = compute_stats(iter(RECORDS))  # a generator: one pass is enough
    assert stats["records"] == 6
    assert stats["shapes"] == {"messages": 3, "text": 1, "preference": 1, "choice": 1}
    assert stats["sources"] == {"a": 2, "b": 1}
    assert stats["languages"] == {"en": 4, "zh": 2}
    assert stats["turns"] == {"mean": 1.0, "max": 2, "multi_turn": 1}
    assert stats["duplicates"] == {"exact": 1, "rate": 0.1667}
    # Nearest rank over 6 values: p50 is the 3rd smallest, p90 and p99 the 6th.
    assert stats["prompt_chars"] == {"mean": 5.83, "p50": 4, "p90": 14, "p99": 14, "max": 14}
    assert stats["response_chars"] == {"mean": 6.67, "p50": 6, "p90": 10, "p99": 10, "max": 10}
    assert "tokens" not in stats
    assert json.loads(json.dumps(stats)) == dict(stats)  # JSON-ready as it is
    assert stats.lengths["response_chars"].tolist() == [10, 10, 9, 6, 4, 1]


def test_stats_of_no_records():
    stats = compute_stats([])
    assert stats["records"] == 0 and stats["response_chars"] == {}
    assert stats["duplicates"] == {"exact": 0, "rate": 0.0}
    assert format_stats(stats).startswith("records")


def test_stats_reject_a_record_that_is_not_unified():
    with pytest.raises(MedtuneError, match="record 2: not a unified record"):
        compute_stats([RECORDS[0], {"instruction": "x"}])


@pytest.fixture(scope="module")
def byte_tokenizer():
    """Byte-level BPE with no merges (256 bytes + 4 specials): one token per UTF-8 byte."""
    from medtune.models.tiny import train_tokenizer

    return train_tokenizer(["abc"], vocab_size=260)


@pytest.fixture(scope="module")
def merging_tokenizer():
    """The tokenizer the tiny test models use, trained on the package's sample data."""
    from medtune.models.tiny import bundled_text, train_tokenizer

    return train_tokenizer(bundled_text(), vocab_size=600)


def test_token_counts_are_bytes_for_a_byte_tokenizer(byte_tokenizer):
    from medtune.data.readers.records import prompt_text, response_text

    stats = compute_stats(RECORDS, tokenizer=byte_tokenizer, batch_size=4)
    expected = [len(prompt_text(r).encode()) + len(response_text(r).encode()) for r in RECORDS]
    assert expected == [13, 14, 18, 18, 27, 15]  # CJK characters are 3 bytes each
    assert stats.lengths["tokens"].tolist() == expected
    assert stats["tokens"] == {"total": 105, "mean": 17.5, "p50": 15, "p90": 27, "p99": 27,
                               "max": 27}


def test_token_counts_do_not_depend_on_the_batch_size(merging_tokenizer):
    from medtune.data.readers.records import prompt_text, response_text

    records = RECORDS * 5
    one = compute_stats(records, tokenizer=merging_tokenizer, batch_size=1)
    many = compute_stats(records, tokenizer=merging_tokenizer, batch_size=7)
    single = [len(merging_tokenizer(prompt_text(r), add_special_tokens=False)["input_ids"])
              + len(merging_tokenizer(response_text(r), add_special_tokens=False)["input_ids"])
              for r in records]
    assert one.lengths["tokens"].tolist() == many.lengths["tokens"].tolist() == single
    assert one["tokens"]["total"] < 105 * 5  # merges happened: fewer tokens than bytes


def test_plot_lengths_writes_one_panel_or_two_with_tokens(tmp_path, byte_tokenizer):
    from matplotlib.image import imread

    chars = plot_lengths(compute_stats(RECORDS), tmp_path / "chars.png")
    both = plot_lengths(compute_stats(RECORDS * 50, tokenizer=byte_tokenizer), tmp_path / "b.png")
    for path in (chars, both):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert imread(chars).shape[1] == 600 and imread(both).shape[1] == 1200  # 6 in per panel
    with pytest.raises(MedtuneError, match="needs the result of compute_stats"):
        plot_lengths(json.loads(json.dumps(compute_stats(RECORDS))), tmp_path / "x.png")


def test_plot_uses_a_log_count_axis_for_a_long_tail(tmp_path, monkeypatch):
    from medtune.data import stats as stats_module

    scales = []
    original = stats_module._histogram

    def spy(ax, values, label):
        original(ax, values, label)
        scales.append(ax.get_yscale())

    monkeypatch.setattr(stats_module, "_histogram", spy)
    tail = [{"text": "x" * 5}] * 500 + [{"text": "x" * 900}]
    plot_lengths(compute_stats(tail), tmp_path / "tail.png")
    plot_lengths(compute_stats([{"text": "x" * (i % 20 + 1)} for i in range(200)]),
                 tmp_path / "flat.png")
    assert scales == ["log", "linear"]


def test_format_stats_table(byte_tokenizer):
    text = format_stats(compute_stats(RECORDS, tokenizer=byte_tokenizer))
    lines = text.splitlines()
    assert lines[0].split() == ["records", "6"]
    assert "1 (16.67%" in text
    assert "messages 3 (50.0%)" in text and "zh 2 (33.3%)" in text
    assert "105 in all" in text
    row = next(line for line in lines if line.startswith("response chars"))
    assert row.split()[2:] == ["6.7", "6", "10", "10", "10"]
    assert np.all([len(line) <= 100 for line in lines])
