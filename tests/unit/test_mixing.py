"""Mixing by weight and train/validation splits: golden counts, determinism, errors, offsets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medtune.data import mixing
from medtune.data.mixing import line_offsets, mix, mix_plan, read_lines_at, sample_indices, split
from medtune.errors import MedtuneError
from tests.conftest import write_jsonl


def numbered(prefix: str, n: int, **extra) -> list[dict]:
    return [{"text": f"{prefix}{i}", "i": i, **extra} for i in range(n)]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------ line offsets


def reference_offsets(data: bytes) -> list[int]:
    """Line starts of non-blank lines, the slow obvious way."""
    starts, pos = [], 3 if data.startswith(b"\xef\xbb\xbf") else 0
    for line in data[pos:].split(b"\n"):
        if line.strip(b" \t\r"):
            starts.append(pos)
        pos += len(line) + 1
    return starts


MESSY = ('\ufeff{"a": 1}\r\n\r\n   \n{"t": "头痛，发热"}\r\n\t\n\n{"b": 2}\n'
         '{"long": "' + "x" * 50 + '"}').encode("utf-8")


def test_line_offsets_skip_blank_lines_and_bom_with_crlf_and_non_ascii(tmp_path):
    path = tmp_path / "messy.jsonl"
    path.write_bytes(MESSY)
    offsets = line_offsets(path)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [3, 19, 48, 57]  # after the BOM; 头痛，发热 is 15 bytes
    assert list(read_lines_at(path, offsets[::-1])) == [
        {"long": "x" * 50}, {"b": 2}, {"t": "头痛，发热"}, {"a": 1}]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 64])
def test_line_offsets_do_not_depend_on_chunk_boundaries(tmp_path, monkeypatch, chunk):
    rng = np.random.default_rng(chunk)
    lines = [rng.choice(["", " ", "\r", '{"k": "' + "é" * int(rng.integers(0, 30)) + '"}'])
             for _ in range(60)]
    data = "\n".join(lines).encode("utf-8")
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    monkeypatch.setattr(mixing, "_CHUNK", chunk)
    assert line_offsets(path).tolist() == reference_offsets(data)


def test_line_offsets_of_empty_and_blank_files(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n \r\n\n")
    assert len(line_offsets(tmp_path / "empty.jsonl")) == 0
    assert len(line_offsets(tmp_path / "blank.jsonl")) == 0
    with pytest.raises(MedtuneError, match="no such file"):
        line_offsets(tmp_path / "missing.jsonl")


def test_read_lines_at_names_the_line_of_bad_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n[1, 2]\n', encoding="utf-8")
    offsets = line_offsets(path)
    with pytest.raises(MedtuneError, match=r"bad.jsonl:3: invalid JSON"):
        list(read_lines_at(path, offsets))
    with pytest.raises(MedtuneError, match=r"bad.jsonl:4: expected a JSON object"):
        list(read_lines_at(path, offsets[2:]))


# ---------------------------------------------------------------------------------- mix plan


def test_mix_plan_with_total_splits_it_exactly_by_weight():
    assert mix_plan({"a": 1000, "b": 1000}, {"a": 0.7, "b": 0.3}, 1000) == {"a": 700, "b": 300}
    # 10/3 each: one remainder goes to the earliest of the tied sources.
    assert mix_plan({"a": 5, "b": 5, "c": 5}, {"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    # Weights are relative: 7:3 is 0.7:0.3; asking for more than a source has upsamples it.
    assert mix_plan({"a": 10, "b": 10}, {"a": 7, "b": 3}, 100) == {"a": 70, "b": 30}


def test_mix_plan_without_total_downsamples_to_the_limiting_source():
    assert mix_plan({"a": 1000, "b": 300}, {"a": 0.7, "b": 0.3}, None) == {"a": 700, "b": 300}
    assert mix_plan({"a": 1000, "b": 300}, {"a": 0.5, "b": 0.5}, None) == {"a": 300, "b": 300}
    # 100 / 0.7 → 142 records: 99.4 and 42.6 → 99 and 43 (largest remainder), never above 100.
    assert mix_plan({"a": 100, "b": 300}, {"a": 0.7, "b": 0.3}, None) == {"a": 99, "b": 43}


def test_mix_plan_without_weights_concatenates_or_keeps_natural_shares():
    assert mix_plan({"a": 30, "b": 10}, None, None) == {"a": 30, "b": 10}
    assert mix_plan({"a": 30, "b": 10}, None, 8) == {"a": 6, "b": 2}


def test_mix_plan_weight_zero_leaves_a_source_out():
    assert mix_plan({"a": 50, "b": 0, "c": 20}, {"a": 1, "b": 0, "c": 1}, None) == {
        "a": 20, "b": 0, "c": 20}


@pytest.mark.parametrize("counts, weights, total, message", [
    ({"a": 1, "b": 1}, {"a": 1}, None, "no weight for source"),
    ({"a": 1, "b": 1}, {"a": 1, "b": 1, "bb": 1}, None, "no source named 'bb'"),
    ({"a": 1}, {"a": 0}, None, "all weights are 0"),
    ({"a": 1}, {"a": -1}, None, "must be a number ≥ 0"),
    ({"a": 1}, {"a": 1}, 0, "total must be"),
    ({"a": 0, "b": 5}, {"a": 1, "b": 1}, 4, "source a has no records"),
    ({"a": 0, "b": 5}, {"a": 1, "b": 1}, None, "source a has no records"),
])
def test_mix_plan_errors(counts, weights, total, message):
    with pytest.raises(MedtuneError, match=message):
        mix_plan(counts, weights, total)


def test_sample_indices_upsamples_in_whole_passes():
    rng = np.random.default_rng(0)
    times = Counter(sample_indices(10, 25, rng).tolist())
    assert sorted(times) == list(range(10))
    assert sorted(Counter(times.values()).items()) == [(2, 5), (3, 5)]  # q = 2, 5 get q + 1
    picks = sample_indices(10, 4, rng)
    assert len(set(picks.tolist())) == 4 and picks.tolist() == sorted(picks.tolist())
    assert sample_indices(10, 10, rng).tolist() == list(range(10))


# --------------------------------------------------------------------------------------- mix


@pytest.fixture
def two_sources(tmp_path) -> dict[str, Path]:
    return {"a": write_jsonl(tmp_path / "a.jsonl", numbered("a", 10)),
            "b": write_jsonl(tmp_path / "b.jsonl", numbered("b", 4))}


def test_mix_upsamples_whole_passes_adds_source_and_summarises(tmp_path, two_sources):
    out = tmp_path / "out" / "mix.jsonl"
    summary = mix(two_sources, {"a": 0.5, "b": 0.5}, 20, seed=3, out_path=out)
    assert summary == {
        "sources": {"a": {"available": 10, "taken": 10, "upsampled": False},
                    "b": {"available": 4, "taken": 10, "upsampled": True}},
        "total": 20, "seed": 3, "weights": {"a": 0.5, "b": 0.5}}
    rows = read_rows(out)
    assert Counter(r["source"] for r in rows) == {"a": 10, "b": 10}
    assert all(r["text"].startswith(r["source"]) for r in rows)
    assert sorted(r["i"] for r in rows if r["source"] == "a") == list(range(10))
    b_times = Counter(r["i"] for r in rows if r["source"] == "b")
    assert sorted(Counter(b_times.values()).items()) == [(2, 2), (3, 2)]  # 10 = 2 × 4 + 2


def test_mix_downsamples_without_total(tmp_path):
    sources = {"big": write_jsonl(tmp_path / "big.jsonl", numbered("big", 100)),
               "small": write_jsonl(tmp_path / "small.jsonl", numbered("small", 30))}
    summary = mix(sources, {"big": 0.7, "small": 0.3}, None, seed=0, out_path=tmp_path / "m.jsonl")
    assert {n: s["taken"] for n, s in summary["sources"].items()} == {"big": 70, "small": 30}
    rows = read_rows(tmp_path / "m.jsonl")
    assert len({(r["source"], r["i"]) for r in rows}) == 100  # no record twice


def test_mix_is_deterministic_by_seed_and_shuffles(tmp_path, two_sources):
    def run(seed, name):
        mix(two_sources, {"a": 0.5, "b": 0.5}, 12, seed=seed, out_path=tmp_path / name)
        return (tmp_path / name).read_bytes()

    assert run(7, "x.jsonl") == run(7, "y.jsonl")
    assert run(7, "x.jsonl") != run(8, "z.jsonl")
    sources = [r["source"] for r in read_rows(tmp_path / "x.jsonl")]
    assert sources != sorted(sources)  # interleaved, not a then b


def test_mix_without_shuffle_keeps_source_and_file_order_and_existing_source(tmp_path):
    sources = {"new": write_jsonl(tmp_path / "n.jsonl", numbered("n", 3)),
               "old": write_jsonl(tmp_path / "o.jsonl", numbered("o", 2, source="earlier"))}
    mix(sources, None, None, seed=0, out_path=tmp_path / "m.jsonl", shuffle=False)
    rows = read_rows(tmp_path / "m.jsonl")
    assert [(r["source"], r["i"]) for r in rows] == [
        ("new", 0), ("new", 1), ("new", 2), ("earlier", 0), ("earlier", 1)]


def test_mix_copies_lines_as_they_are_apart_from_the_source(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b'{"text": "\\u5934", "n": 1.50 }\r\n{}\n{"source": "s0", "text": "x"}')
    mix({"raw": path}, None, None, seed=0, out_path=tmp_path / "m.jsonl", shuffle=False)
    assert (tmp_path / "m.jsonl").read_bytes().splitlines() == [
        b'{"text": "\\u5934", "n": 1.50 , "source": "raw"}', b'{"source": "raw"}',
        b'{"source": "s0", "text": "x"}']


def test_mix_reports_bad_lines_and_refuses_to_overwrite_an_input(tmp_path, two_sources):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(MedtuneError, match=r"bad.jsonl:2: invalid JSON"):
        mix({"bad": bad}, None, None, seed=0, out_path=tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists() and not (tmp_path / "m.jsonl.tmp").exists()
    with pytest.raises(MedtuneError, match="is also an input"):
        mix(two_sources, None, None, seed=0, out_path=two_sources["a"])


# ------------------------------------------------------------------------------------- split


@pytest.fixture
def grouped(tmp_path) -> Path:
    """100 records in file order: 60 of source x, 30 of y, 10 without a source, interleaved."""
    kinds = ["x"] * 60 + ["y"] * 30 + [None] * 10
    order = np.random.default_rng(0).permutation(100)
    rows = [{"text": f"r{i}", "i": i, **({"source": kinds[k]} if kinds[k] else {})}
            for i, k in enumerate(order)]
    return write_jsonl(tmp_path / "all.jsonl", rows)


def split_rows(out_dir: Path) -> tuple[list[dict], list[dict]]:
    return read_rows(out_dir / "train.jsonl"), read_rows(out_dir / "validation.jsonl")


def test_split_by_fraction_is_exact_and_stratified(tmp_path, grouped):
    result = split(grouped, tmp_path / "s", val=0.1, seed=0)
    assert result == {"train": 90, "validation": 10, "duplicates": 0, "groups": {
        "x": {"train": 54, "validation": 6}, "y": {"train": 27, "validation": 3},
        "(none)": {"train": 9, "validation": 1}}}
    train, val = split_rows(tmp_path / "s")
    assert Counter(r.get("source") for r in val) == {"x": 6, "y": 3, None: 1}
    assert sorted(r["i"] for r in train + val) == list(range(100))  # a partition
    for rows in (train, val):  # input order kept
        assert [r["i"] for r in rows] == sorted(r["i"] for r in rows)


def test_split_by_count_uses_largest_remainder(tmp_path, grouped):
    result = split(grouped, tmp_path / "s", val=7, seed=1)
    # 7 × (0.6, 0.3, 0.1) = 4.2, 2.1, 0.7 → 4, 2, 0 and the spare one to (none).
    assert {g: c["validation"] for g, c in result["groups"].items()} == {"x": 4, "y": 2, "(none)": 1}
    assert (result["train"], result["validation"]) == (93, 7)


def test_split_without_stratify_and_determinism(tmp_path, grouped):
    a = split(grouped, tmp_path / "a", val=0.25, seed=5, stratify=None)
    split(grouped, tmp_path / "b", val=0.25, seed=5, stratify=None)
    split(grouped, tmp_path / "c", val=0.25, seed=6, stratify=None)
    assert a["groups"] == {"(none)": {"train": 75, "validation": 25}}
    same = (tmp_path / "a" / "validation.jsonl").read_bytes()
    assert same == (tmp_path / "b" / "validation.jsonl").read_bytes()
    assert same != (tmp_path / "c" / "validation.jsonl").read_bytes()


def test_split_copies_lines_byte_for_byte(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": "\xe5\xa4\xb4"}\r\n{"a":3}')
    split(path, tmp_path / "s", val=1, seed=0, stratify=None)
    out = (tmp_path / "s" / "train.jsonl").read_bytes() + (tmp_path / "s" / "validation.jsonl").read_bytes()
    assert sorted(out.splitlines(keepends=True)) == sorted(
        [b'{"a": 1}\r\n', b'{"a": "\xe5\xa4\xb4"}\r\n', b'{"a":3}\n'])


@pytest.mark.parametrize("val, message", [
    (100, "validation size 100 leaves no training records"),
    (0.999, "validation size 100 leaves no training records"),
    (0, "fraction in \\(0, 1\\) or a count"),
    (-0.1, "fraction in \\(0, 1\\) or a count"),
    (1.5, "neither a fraction < 1 nor a whole count"),
])
def test_split_rejects_bad_validation_sizes(tmp_path, grouped, val, message):
    with pytest.raises(MedtuneError, match=message):
        split(grouped, tmp_path / "s", val=val, seed=0)


def test_split_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match="empty.jsonl: no records"):
        split(tmp_path / "empty.jsonl", tmp_path / "s", val=0.1, seed=0)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{oops}\n', encoding="utf-8")
    with pytest.raises(MedtuneError, match=r"bad.jsonl:3: invalid JSON"):
        split(tmp_path / "bad.jsonl", tmp_path / "s", val=0.1, seed=0)
    assert not (tmp_path / "s" / "train.jsonl").exists()


def test_split_keeps_the_copies_of_an_upsampled_record_on_one_side(tmp_path):
    """README: data mix (upsampling) then data split must not leak validation records into train."""
    from medtune.data.mixing import mix, split

    src = tmp_path / "small.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(50)),
                   encoding="utf-8")
    mix({"small": src}, None, total=2500, seed=0, out_path=tmp_path / "mix.jsonl")
    result = split(tmp_path / "mix.jsonl", tmp_path / "out", val=0.1, seed=0)

    def contents(name):
        return set((tmp_path / "out" / name).read_text(encoding="utf-8").splitlines())

    assert not contents("train.jsonl") & contents("validation.jsonl")
    assert result["train"] + result["validation"] == 2500 and result["duplicates"] == 2450
    assert result["validation"] == 250  # 5 of 50 contents, 50 copies each


def test_split_without_duplicates_is_unchanged_by_content_units(tmp_path):
    from medtune.data.mixing import split

    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\n" for i in range(20)),
                   encoding="utf-8")
    result = split(src, tmp_path / "out", val=3, seed=1)
    assert (result["train"], result["validation"], result["duplicates"]) == (17, 3, 0)
