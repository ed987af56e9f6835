"""data.train inputs: files, dirs, globs, gzip / zstd, Parquet shards, save_to_disk folders, hf ids;
bad inputs as one-line errors; the spool and streamed tokenization keep the old example order and
hold a bounded number of records."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from medtune.data.readers.inputs import read_corpus, resolve_inputs
from medtune.errors import MedtuneError
from tests.conftest import write_jsonl

ROWS = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]


def texts(corpus) -> list[str]:
    return [r["messages"][0]["content"] if "messages" in r else r["text"]
            for r in corpus.records(range(len(corpus))).load()]


def test_directory_and_recursive_glob_read_every_file_in_path_order(tmp_path):
    (tmp_path / "c/b").mkdir(parents=True)
    write_jsonl(tmp_path / "c/b/2.jsonl", ROWS[5:])
    write_jsonl(tmp_path / "c/1.jsonl", ROWS[:5])
    (tmp_path / "c/notes.md").write_text("not data")
    by_dir = read_corpus([str(tmp_path / "c")])
    by_glob = read_corpus([str(tmp_path / "c/**/*.jsonl")])
    for corpus in (by_dir, by_glob):
        assert [f.path for f in corpus.files] == [str(tmp_path / "c/1.jsonl"), str(tmp_path / "c/b/2.jsonl")]
        assert texts(corpus) == [f"q{i}" for i in range(10)]
        assert [f.bucket for f in corpus.files] == [0, 0]  # one data.train entry: one bucket
        assert all(len(f.sha256) == 64 and f.n_records == 5 for f in corpus.files)


def test_gzip_and_zstd_files_read_like_the_plain_file(tmp_path):
    import pyarrow as pa

    plain = write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    with pa.output_stream(str(tmp_path / "a.jsonl.zst"), compression="zstd") as f:
        f.write(plain.read_bytes())
    with pa.output_stream(str(tmp_path / "t.txt.zst"), compression="zstd") as f:
        f.write("第一篇文档\n\nsecond document\n".encode())
    want = texts(read_corpus([str(plain)]))
    for name in ("a.jsonl.gz", "a.jsonl.zst"):
        corpus = read_corpus([str(tmp_path / name)])
        assert texts(corpus) == want and corpus.files[0].format == "alpaca"
    assert texts(read_corpus([str(tmp_path / "t.txt.zst")])) == ["第一篇文档", "second document"]


def test_parquet_shards_and_a_save_to_disk_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "pq").mkdir()
    for n in range(2):
        pq.write_table(pa.Table.from_pylist(ROWS[n * 5:(n + 1) * 5]), tmp_path / f"pq/train-{n:05d}.parquet")
    corpus = read_corpus([str(tmp_path / "pq/*.parquet")])
    assert texts(corpus) == [f"q{i}" for i in range(10)] and len(corpus.files) == 2
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    saved = read_corpus([str(tmp_path / "saved")])
    (f,) = saved.files
    assert f.kind == "saved" and texts(saved) == [f"q{i}" for i in range(10)]
    assert len(f.sha256) == 64 and f.revision  # the folder's files hashed, its fingerprint kept


def test_hf_id_of_a_local_dataset_folder_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "ds/data").mkdir(parents=True)
    write_jsonl(tmp_path / "ds/data/train.jsonl", ROWS)
    corpus = read_corpus([f"hf:{tmp_path / 'ds'}:train"])
    (f,) = corpus.files
    assert f.kind == "hf" and f.sha256 and texts(corpus) == [f"q{i}" for i in range(10)]


def test_hf_id_offline_without_a_copy_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedtuneError) as e:
        read_corpus(["hf:medtune-test/no-such-dataset"])
    assert "offline" in str(e.value) and "save_to_disk" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("entry,pattern", [
    ("nothing/**/*.jsonl.gz", "the pattern matches no files"),
    ("trunc.jsonl.gz", "cannot decompress"),
    ("trunc.jsonl.zst", "cannot decompress"),
    ("long.txt", "over the 1 MiB one record may have"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, monkeypatch, entry, pattern):
    import pyarrow as pa

    from medtune.data.readers import stream

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stream, "MAX_LINE_BYTES", 1 << 20)  # stands for 64 MiB: a 100 MB line
    body = "".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(5000)).encode()
    Path("trunc.jsonl.gz").write_bytes(gzip.compress(body)[:-40])
    with pa.output_stream("full.zst", compression="zstd") as f:
        f.write(body)
    Path("trunc.jsonl.zst").write_bytes(Path("full.zst").read_bytes()[:-40])
    Path("long.txt").write_text("short\n" + "x" * (3 << 20) + "\nshort\n")
    with pytest.raises(MedtuneError) as e:
        read_corpus([entry])
    assert pattern in str(e.value) and "\n" not in str(e.value)
    if entry == "long.txt":
        assert str(e.value).startswith("long.txt:2: a line of 3 MiB")


def test_inputs_of_different_shapes_are_refused(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "plain text"}])
    with pytest.raises(MedtuneError, match="all files must have one shape"):
        read_corpus([str(a), str(b)])
    assert [f.bucket for f in resolve_inputs([str(a), str(b)])] == [0, 1]


# ---------------------------------------------------------------------------------------------
# streamed tokenization


def make_ids(records, stats):
    """A stand-in stage: one example per record, its tokens naming the record; every 7th skipped."""
    out = []
    for r in records:
        n = int(r["messages"][0]["content"][1:])
        if n % 7 == 3:
            stats.skip("test")
            continue
        stats.examples += 1
        out.append({"input_ids": [n] * (1 + n % 5), "labels": [n] * (1 + n % 5)})
    return out


def old_order(files_records, seed, eval_split):
    """The examples' order as the in-memory tokenization (before streaming) made it."""
    records = [(i, r) for i, recs in enumerate(files_records) for r in recs]
    random.Random(seed).shuffle(records)
    n_eval = round(len(records) * eval_split) or (1 if eval_split else 0)
    train = []
    for bucket in range(len(files_records)):
        train += [(ex, bucket) for ex in make_ids([r for i, r in records[n_eval:] if i == bucket], Stats())]
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    return [train[i] for i in order], make_ids([r for _, r in records[:n_eval]], Stats())


class Stats:
    def skip(self, reason):
        pass

    examples = 0


def config(eval_split, workers=1, max_length=8):
    return SimpleNamespace(train=SimpleNamespace(seed=7),
                           data=SimpleNamespace(eval_split=eval_split, workers=workers, max_length=max_length,
                                                mixture="none"))


@pytest.mark.parametrize(("shard", "batch", "workers"), [(4, 1000, 1), (1000, 1000, 1), (1000, 3, 2)])
def test_streamed_tokenization_keeps_the_old_example_order(tmp_path, monkeypatch, shard, batch, workers):
    from datasets import Dataset

    from medtune.data.tokenize import shards
    from medtune.data.tokenize.cache import tokenize_rows
    from medtune.data.tokenize.examples import TokenStats, pack_sequences

    monkeypatch.setattr(shards, "SHARD_RECORDS", shard)
    monkeypatch.setattr(shards, "BATCH_RECORDS", batch)  # 3: datasets.map splits each shard over 2 processes
    sizes = [40, 13, 27]
    start = [0, 40, 53]
    files = [write_jsonl(tmp_path / f"{b}.jsonl", [{"instruction": f"q{start[b] + i}", "output": "a"}
                                                   for i in range(n)]) for b, n in enumerate(sizes)]
    corpus = read_corpus([str(f) for f in files])
    records = [corpus.records(range(s, s + n)).load() for s, n in zip(start, sizes)]
    want_train, want_eval = old_order(records, 7, 0.1)
    for pack in (False, True):
        out = tmp_path / f"out{shard}{pack}"
        out.mkdir()
        stats = TokenStats()
        tokenize_rows(config(0.1, workers), make_ids, corpus, stats, pack, tmp_path / f"parts{shard}{pack}", out)
        train, evals = Dataset.from_file(str(out / "train.arrow")), Dataset.from_file(str(out / "eval.arrow"))
        if pack:
            assert train.to_list() == [r | {"length": len(r["input_ids"])}
                                       for r in pack_sequences([ex for ex, _ in want_train], 8)]
            assert stats.rows == len(train)
            continue
        assert [(r["input_ids"], r["bucket"]) for r in train] == [(ex["input_ids"], b) for ex, b in want_train]
        assert [r["input_ids"] for r in evals] == [ex["input_ids"] for ex in want_eval]
        assert stats.examples == len(want_train) and stats.skipped["test"] > 0
        # every skip counted once, whichever process made it: examples + skips = the train records
        assert stats.examples + stats.skipped["test"] == sum(sizes) - round(sum(sizes) * 0.1)


def test_a_resumed_shard_redoes_only_the_unfinished_process_file(tmp_path, monkeypatch):
    from medtune.data.tokenize import shards
    from medtune.data.tokenize.examples import TokenStats

    monkeypatch.setattr(shards, "BATCH_RECORDS", 4)
    records = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(30)]
    parts, full = tmp_path / "parts", TokenStats()
    files, n_rows = shards.checkpointed_examples(parts, "train", records, make_ids, full, workers=2)
    names = sorted(f.name for f in files)
    assert names == ["train-0_00000_of_00002.arrow", "train-0_00001_of_00002.arrow"]
    rows = [shards._count_rows(f) for f in files]
    # as if killed while the second process was writing: its file and the shard's record are gone
    (parts / names[1]).unlink()
    (parts / "train-0.json").unlink()
    calls = []

    def counting(recs, stats):
        calls.append([int(r["messages"][0]["content"][1:]) for r in recs])
        return make_ids(recs, stats)

    again = TokenStats()
    files, n_rows2 = shards.checkpointed_examples(parts, "train", records, counting, again, workers=1)
    assert [c for batch in calls for c in batch] == list(range(15, 30))  # only the second process's half
    assert sorted(f.name for f in files) == names and [shards._count_rows(f) for f in files] == rows
    assert again == full and n_rows2 == n_rows and full.skipped["test"] == 4  # 3, 10, 17, 24


def test_streamed_tokenization_holds_a_bounded_number_of_records(tmp_path, monkeypatch):
    import datasets  # noqa: F401  (imported before measuring: modules are not records)

    from medtune.data.readers import stream
    from medtune.data.tokenize import shards
    from medtune.data.tokenize.cache import tokenize_rows
    from medtune.data.tokenize.examples import TokenStats

    monkeypatch.setattr(shards, "SHARD_RECORDS", 1000)
    # the reader's fixed 8 MiB chunk buffers would dominate 50k small records: 1 MiB here
    monkeypatch.setattr(stream.iter_chunks, "__defaults__", (1 << 20,))
    n, pad = 50_000, "病" * 300
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"q{i}", "output": pad}, ensure_ascii=False) + "\n")
    tracemalloc.start()
    try:
        corpus = read_corpus([str(path)])
        (tmp_path / "out").mkdir()
        tokenize_rows(config(0.01), make_ids, corpus, TokenStats(), False, tmp_path / "parts", tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        every = corpus.records(range(n)).load()  # what the old path held: every record at once
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(every) == n
    assert peak < held / 3, f"peak {peak / 2**20:.1f} MiB; all records hold {held / 2**20:.0f} MiB"


def test_lineage_names_each_input_with_its_hash_or_revision(tmp_path):
    import datasets

    from medtune.recipes.run_dir import _lineage_input

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    plain = write_jsonl(tmp_path / "a.jsonl", ROWS)
    corpus = read_corpus([str(plain), str(tmp_path / "saved")])
    file_entry, saved_entry = (_lineage_input(f) for f in corpus.files)
    assert file_entry == {"path": str(plain), "format": "alpaca", "sha256": corpus.files[0].sha256,
                          "records": 10, "skipped": {}}
    assert saved_entry["kind"] == "saved" and saved_entry["revision"] and len(saved_entry["sha256"]) == 64


def test_loading_a_few_spooled_records_does_not_copy_the_spool(tmp_path):
    """A worker loads its batch of records by index: Arrow's take over the whole spool column would
    first join its chunks, a copy of the spool for every batch (1M records: 0.5 GB per worker)."""
    import pyarrow as pa

    pad = "x" * 200
    path = write_jsonl(tmp_path / "many.jsonl", [{"instruction": f"q{i}", "output": pad} for i in range(20_000)])
    corpus = read_corpus([str(path)])
    spool = corpus.spool.stat().st_size
    before = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(before)  # counts the peak of what Arrow allocates from here on
    pa.set_memory_pool(pool)
    try:
        got = corpus.records([5, 19_000, 7]).load()
    finally:
        pa.set_memory_pool(before)
    assert [r["messages"][0]["content"] for r in got] == ["q5", "q19000", "q7"]
    assert pool.max_memory() < spool / 20, f"{pool.max_memory()} bytes allocated for 3 records of a {spool}-byte spool"
