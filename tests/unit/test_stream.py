"""Streaming readers and convert: containers, encodings, policies, chunked == whole, shared data counts."""

import itertools
import json
import pathlib

import pytest

from medtune.data.readers.convert import ConvertOptions, convert_files
from medtune.data.readers.stream import (
    ReadOptions,
    Tally,
    detect_encoding,
    iter_records,
    jsonl_chunks,
)
from medtune.errors import MedtuneError

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
COUNT = ReadOptions(on_error="count", keep_meta=True)


def sft_rows(n):
    rows = []
    for i in range(n):
        if i % 7 == 3:
            rows.append('{"instruction": "broken')  # a JSON line cut in half
        elif i % 11 == 5:
            rows.append(json.dumps({"instruction": f"q{i}", "output": ""}))  # empty answer
        else:
            rows.append(json.dumps({"instruction": f"问题{i}", "output": f"回答{i}", "id": i},
                                   ensure_ascii=False))
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_chunked_conversion_equals_whole_file(tmp_path, workers):
    src = tmp_path / "in.jsonl"
    src.write_text(sft_rows(300), "utf-8")
    whole, pieces = tmp_path / "whole.jsonl", tmp_path / "pieces.jsonl"
    [a] = convert_files([src], whole, ConvertOptions(workers=1))
    [b] = convert_files([src], pieces, ConvertOptions(workers=workers, chunk_bytes=700))
    assert len(jsonl_chunks(src, 700)) > 10
    assert whole.read_bytes() == pieces.read_bytes()
    assert a.to_dict() == b.to_dict()
    assert a.read == 300 and a.skipped == {"broken JSON line": 43, "empty output": 23}
    assert a.written == 300 - 43 - 23
    assert a.examples["broken JSON line"][0].endswith("in.jsonl:4: invalid JSON (Unterminated string "
                                                      "starting at at column 17)")


def test_jsonl_chunks_cover_file_at_line_starts(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text(sft_rows(50), "utf-8")
    data = src.read_bytes()
    chunks = jsonl_chunks(src, 100)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(data)
    for (s, e, line), (s2, _, line2) in itertools.pairwise(chunks):
        assert e == s2 and data[e - 1:e] == b"\n" and line2 == line + data[s:e].count(b"\n")


def test_policies(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text('{"text": "a"}\n{"text": ""}\n{"text": 3}\n', "utf-8")
    tally = Tally(str(src))
    assert [r["text"] for r in iter_records(src, ReadOptions(on_error="count"), tally)] == ["a"]
    assert tally.skipped == {"empty text": 1, 'field "text" must be a string, got number': 1}
    with pytest.raises(MedtuneError, match=r"x.jsonl:3: field \"text\" must be a string"):
        list(iter_records(src, ReadOptions(on_error="bad")))
    with pytest.raises(MedtuneError, match=r"x.jsonl:2: empty text"):
        list(iter_records(src, ReadOptions(on_error="raise")))


def test_encodings(tmp_path):
    utf16 = tmp_path / "u16.json"
    utf16.write_bytes(json.dumps([{"text": "发热"}], ensure_ascii=False).encode("utf-16"))
    gb = tmp_path / "gb.jsonl"
    gb.write_bytes('{"text": "内科"}\n'.encode("gb18030"))
    assert detect_encoding(utf16) == "utf-16" and detect_encoding(gb) == "gb18030"
    assert [r["text"] for r in iter_records(utf16)] == ["发热"]
    assert [r["text"] for r in iter_records(gb)] == ["内科"]
    forced = tmp_path / "f.jsonl"
    forced.write_bytes('{"text": "内科"}\n'.encode("gb18030"))
    with pytest.raises(MedtuneError, match="f.jsonl:1: not UTF-8 text"):
        list(iter_records(forced, ReadOptions(encoding="utf-8")))


def test_csv_tsv_parquet_and_keyed_json(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(",Question,A,B,C,D,Answer\n0,女性生殖腺是,卵巢,前庭大腺,前庭球,乳腺,A\n"
                        "1,坏行,x\n", "utf-8")
    tally = Tally(str(csv_path))
    [rec] = iter_records(csv_path, COUNT, tally)
    assert rec == {"question": "女性生殖腺是", "options": {"A": "卵巢", "B": "前庭大腺", "C": "前庭球",
                                                       "D": "乳腺"}, "answer": "A",
                   "source": "m", "subject": "m"}
    assert tally.skipped == {"wrong number of columns": 1}
    tsv = tmp_path / "t.tsv"
    tsv.write_text("q\ta\n头痛\t休息\n", "utf-8")
    opts = ReadOptions(columns={"q": "query", "a": "response"})
    assert next(iter_records(tsv, opts))["messages"][1]["content"] == "休息"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p1", "p2"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"]}),
                   tmp_path / "p.parquet")
    recs = list(iter_records(tmp_path / "p.parquet"))
    assert [r["chosen"][0]["content"] for r in recs] == ["c1", "c2"]
    keyed = tmp_path / "k.json"
    keyed.write_text(json.dumps({"111": {"QUESTION": "Q?", "CONTEXTS": ["c1", "c2"],
                                         "final_decision": "maybe"},
                                 "222": {"QUESTION": "R?", "CONTEXTS": [], "final_decision": "no"}}))
    recs = list(iter_records(keyed, COUNT))
    assert [(r["id"], r["answer"], r["context"]) for r in recs] == [("111", "C", "c1\nc2"), ("222", "B", "")]


def test_choice_layouts():
    from medtune.data.readers.choice import read_choice

    apollo = read_choice({"question": "Q", "options": "(A) a.\n(B) b.\n(C) c\nmore\n(D) d", "answer": "(CB)"})
    assert apollo["options"] == {"A": "a.", "B": "b.", "C": "c\nmore", "D": "d"} and apollo["answer"] == "BC"
    medqa = read_choice({"question": "Q", "options": {"A": "x", "B": "y"}, "answer": "y", "answer_idx": "B",
                         "meta_info": "step1"})
    assert medqa["answer"] == "B" and medqa["subject"] == "step1"
    by_text = read_choice({"question": "Q", "options": {"A": "x", "B": "y"}, "answer": "y"})
    assert by_text["answer"] == "B"
    cmb = read_choice({"question": "Q", "option": {"A": "x", "B": "y", "C": "z"}, "answer": "AC"})
    assert cmb["answer"] == "AC"


def test_mixed_shapes_refused(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text('{"text": "x"}\n')
    b = tmp_path / "b.jsonl"
    b.write_text('{"instruction": "q", "output": "a"}\n')
    with pytest.raises(MedtuneError, match="gives messages records, but .*a.jsonl gives text"):
        convert_files([a, b], tmp_path / "o.jsonl", ConvertOptions(workers=1))


SHARED_COUNTS = {
    "huatuo/llama_data.json": ("alpaca", 8658), "medicalgpt/sft/medical_sft_1K_format.jsonl": ("sharegpt", 1000),
    "medicalgpt/reward/dpo_zh_500.jsonl": ("preference", 500), "medicalgpt/reward/test.json": ("preference", 100),
    "medicalgpt/pretrain/fever.txt": ("text", 985), "medicalgpt/grpo/sample.jsonl": ("pair", 32),
    "chinese-medical-dialogue-data/internal_medicine_5000-6000.csv": ("pair", 7644),
    "chatdoctor/chatdoctor5k.json": ("alpaca", 5452), "zhongjing/CMtMedQA_test.json": ("alpaca", 1144),
    "huangdi/sample.json": ("alpaca", 100), "huatuogpt/eval/KUAKE-QIC_100.json": ("prompt", 100),
    "huatuogpt/eval/Med-dialog_100.json": ("pair", 100), "cmb/CMB-test-qa.json": ("cmb-clin", 74),
    "apollo/test/zh.json": ("choice", 8759), "apollo/dev/zh.json": ("choice", 437),
    "apollo/dev/en.json": ("choice", 416), "medagents/medqa/test.jsonl": ("choice", 1273),
    "medagents/medmcqa/test.jsonl": ("choice", 2816), "medagents/mmlu/test.jsonl": ("choice", 1089),
    "pubmedqa/ori_pqal.json": ("pubmedqa", 1000), "pubmedqa/test_ground_truth.json": ("label", 500),
}


@needs_shared
@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_every_shared_file_converts_with_its_record_count(tmp_path, name):
    fmt, count = SHARED_COUNTS[name]
    [tally] = convert_files([SHARED / name], tmp_path / "o.jsonl", ConvertOptions(workers=1))
    assert (tally.format, tally.read, tally.written, dict(tally.skipped)) == (fmt, count, count, {})


@needs_shared
def test_shared_cmmlu_and_details(tmp_path):
    for split, total in (("test", 1815), ("dev", 45)):
        files = sorted((SHARED / "cmmlu" / split).glob("*.csv"))
        assert len(files) == 9
        tallies = convert_files(files, tmp_path / f"{split}.jsonl", ConvertOptions(workers=1))
        assert sum(t.written for t in tallies) == total and not any(t.skipped for t in tallies)
    out = tmp_path / "apollo.jsonl"
    convert_files([SHARED / "apollo/test/zh.json"], out, ConvertOptions(workers=1))
    recs = [json.loads(x) for x in out.read_text("utf-8").splitlines()]
    by_source = {}
    for r in recs:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    assert by_source == {"medqa-mcmle": 3426, "cmb-single": 2000, "cmexam": 2000, "cmmlu-medical": 1333}
    # SOURCES.md says 42 multi-answer cmexam rows; the file has 62 answers of 2+ letters.
    assert sum(len(r["answer"]) > 1 for r in recs if r["source"] == "cmexam") == 62
    cases = tmp_path / "cmb.jsonl"
    convert_files([SHARED / "cmb/CMB-test-qa.json"], cases, ConvertOptions(workers=1))
    turns = [len(json.loads(x)["messages"]) // 2 for x in cases.read_text("utf-8").splitlines()]
    assert sum(turns) == 208  # 74 cases, 208 QA pairs
