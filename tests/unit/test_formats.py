"""Tests for medtune.data.readers.formats: readers, auto-detection, errors, skips, and the shared data files."""

import hashlib
import json
import pathlib

import pytest

from medtune.data.readers.files import FileData, read_file, read_files, to_dataset
from medtune.data.readers.formats import FORMATS, SHAPES
from medtune.errors import MedtuneError

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_json(path, rows):
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=4), "utf-8")
    return path


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def error_of(path, format="auto"):
    with pytest.raises(MedtuneError) as info:
        read_file(path, format)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_constants():
    assert set(FORMATS) == {"alpaca", "sharegpt", "messages", "text", "preference", "pair", "kto",
                            "prompt", "cmb-clin", "label", "choice", "pubmedqa", "huatuo-o1"}
    assert SHAPES == {
        "prompt": "prompt",
        "cmb-clin": "messages",
        "huatuo-o1": "messages",
        "label": "label",
        "choice": "choice",
        "pubmedqa": "choice",
        "alpaca": "messages",
        "sharegpt": "messages",
        "messages": "messages",
        "text": "text",
        "preference": "preference",
        "pair": "messages",
        "kto": "kto",
    }


def test_pair_columns_of_the_seeds(tmp_path):
    path = tmp_path / "adgen.json"
    path.write_text('{"content":"类型#裙*颜色#红","summary":"这条红裙很美。"}\n{"content":"x","summary":""}\n'
                    '{"context":"头痛","target":"多休息"}\n', encoding="utf-8")
    got = read_file(path)
    assert got.format == "pair" and got.skipped == {"empty summary": 1}
    assert got.records[0]["messages"][1] == {"role": "assistant", "content": "这条红裙很美。"}
    assert got.records[1]["messages"][0]["content"] == "头痛"


def test_kto_label_must_be_boolean(tmp_path):
    path = tmp_path / "kto.jsonl"
    path.write_text('{"prompt":"头痛怎么办","completion":"多休息","label":true}\n'
                    '{"prompt":"头痛怎么办","completion":"不用管","label":"no"}\n', encoding="utf-8")
    with pytest.raises(MedtuneError, match=r'kto.jsonl:2: field "label" must be true or false'):
        read_file(path)
    path.write_text('{"prompt":"头痛怎么办","completion":"多休息","label":false}\n', encoding="utf-8")
    got = read_file(path)
    assert got.format == "kto" and [r["label"] for r in got.records] == [False]


def test_unknown_format_name(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    with pytest.raises(MedtuneError, match=r"unknown format 'alpacca' \(did you mean 'alpaca'\?\)"):
        read_file(path, "alpacca")


# ---------------------------------------------------------------------------------------------
# alpaca


def test_alpaca_input_history_system(tmp_path):
    rows = [
        {"instruction": "Q1", "input": "", "output": "A1"},
        {
            "instruction": "Q2",
            "input": "ctx",
            "output": "A2",
            "system": "be kind",
            "history": [["h1", "r1"], ["h2", "r2"]],
        },
        {"instruction": "Q3", "output": "A3", "input": None, "history": []},
    ]
    data = read_file(write_jsonl(tmp_path / "a.jsonl", rows))
    assert data.format == "alpaca" and data.shape == "messages" and data.n_records == 3
    assert data.records[0] == {"messages": msgs(("user", "Q1"), ("assistant", "A1"))}
    assert data.records[1]["messages"] == msgs(
        ("system", "be kind"),
        ("user", "h1"),
        ("assistant", "r1"),
        ("user", "h2"),
        ("assistant", "r2"),
        ("user", "Q2\nctx"),
        ("assistant", "A2"),
    )
    assert data.records[2] == {"messages": msgs(("user", "Q3"), ("assistant", "A3"))}
    assert data.skipped == {}


def test_alpaca_json_array_and_json_that_is_jsonl(tmp_path):
    rows = [{"instruction": f"Q{i}", "input": "", "output": f"A{i}"} for i in range(3)]
    array = read_file(write_json(tmp_path / "array.json", rows))
    jsonl = read_file(write_jsonl(tmp_path / "lines.json", rows))
    assert array.format == jsonl.format == "alpaca"
    assert array.records == jsonl.records and array.n_records == 3


def test_alpaca_skips_empty_records(tmp_path):
    rows = [
        {"instruction": "Q", "output": "A"},
        {"instruction": "Q", "output": "   "},
        {"instruction": "Q", "output": ""},
        {"instruction": " ", "input": "", "output": "A"},
        {"instruction": "", "input": "only input", "output": "A"},
        {"instruction": "Q", "output": "A", "history": [["", "r"]]},
        {"instruction": "Q", "output": "A", "system": "  "},
    ]
    data = read_file(write_jsonl(tmp_path / "a.jsonl", rows))
    assert data.skipped == {"empty output": 2, "empty instruction": 1, "empty history turn": 1}
    assert data.n_records == 3
    assert data.records[1]["messages"][0] == {"role": "user", "content": "only input"}
    assert data.records[2]["messages"][0]["role"] == "user"  # whitespace system dropped


def test_alpaca_missing_field_error(tmp_path):
    rows = [{"instruction": "Q", "output": "A"}] * 16 + [{"instruction": "Q", "response": "A"}]
    message = error_of(write_jsonl(tmp_path / "x.jsonl", rows))
    assert f"{tmp_path / 'x.jsonl'}:17: " in message
    assert 'field "output" missing (format alpaca)' in message
    assert "response" in message  # the keys seen


def test_alpaca_wrong_types(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "Q", "output": 3}])
    assert ':1: field "output" must be a string, got number (format alpaca)' in error_of(path)
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "Q", "output": "A", "history": "h"}])
    assert 'field "history" must be a list' in error_of(path)
    path = write_jsonl(
        tmp_path / "x.jsonl", [{"instruction": "Q", "output": "A", "history": [["a"]]}]
    )
    assert 'field "history[0]" must be a [user, assistant] pair' in error_of(path)
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "Q", "output": None}])
    assert 'field "output" must be a string, got null' in error_of(path)


def test_error_line_in_json_array(tmp_path):
    rows = [
        {"instruction": "Q", "output": "A"},
        {"instruction": "Q", "output": "A"},
        {"instruction": "Q [x] {y}", "outptu": "A"},
    ]
    path = write_json(tmp_path / "x.json", rows)
    line = next(
        n for n, text in enumerate(path.read_text().splitlines(), 1) if '"outptu"' in text
    )
    message = error_of(path)
    assert f"x.json:{line - 2}: " in message  # the line where the record's "{" is
    assert 'field "output" missing (format alpaca)' in message


# ---------------------------------------------------------------------------------------------
# sharegpt / messages


def test_sharegpt_roles_and_system(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "user", "value": "u1"},
                {"from": "assistant", "value": "a1"},
                {"from": "human", "value": "u2"},
                {"from": "gpt", "value": "a2"},
            ]
        },
        {
            "system": "top",
            "conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}],
        },
    ]
    data = read_file(write_jsonl(tmp_path / "s.jsonl", rows))
    assert data.format == "sharegpt"
    assert data.records[0]["messages"] == msgs(("user", "hi"), ("assistant", "yo"))
    assert data.records[1]["messages"] == msgs(
        ("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")
    )
    assert data.records[2]["messages"] == msgs(("system", "top"), ("user", "u"), ("assistant", "a"))


def test_sharegpt_errors(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": "hi"}])
    assert ':1: field "conversations" must be a list, got string (format sharegpt)' in error_of(
        path
    )
    bad_from = [{"from": "human", "value": "q"}, {"from": "gtp", "value": "a"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": bad_from}])
    message = error_of(path)
    assert "field \"conversations[1].from\" has unknown value 'gtp'" in message
    assert "did you mean 'gpt'" in message
    ends_user = [{"from": "human", "value": "q"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": ends_user}])
    assert "must end with an assistant turn" in error_of(path)
    twice = [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": twice}])
    assert 'field "conversations[1]" is a user turn, expected assistant' in error_of(path)
    no_value = [{"from": "human"}]
    path = write_jsonl(tmp_path / "s.jsonl", [{"conversations": no_value}])
    assert 'field "conversations[0].value" missing (format sharegpt)' in error_of(path)


def test_sharegpt_skips(tmp_path):
    good = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    rows = [
        {"conversations": good},
        {"conversations": []},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
        {"conversations": [{"from": "system", "value": ""}] + good},
    ]
    data = read_file(write_jsonl(tmp_path / "s.jsonl", rows), "sharegpt")
    assert data.skipped == {"empty conversation": 1, "empty turn": 1}
    assert data.records[1]["messages"] == msgs(("user", "q"), ("assistant", "a"))


def test_messages_format(tmp_path):
    conv = msgs(("system", "S"), ("user", "q"), ("assistant", "a"))
    data = read_file(write_jsonl(tmp_path / "m.jsonl", [{"messages": conv}]))
    assert data.format == "messages" and data.records == [{"messages": conv}]
    bad = [{"messages": msgs(("human", "q"), ("assistant", "a"))}]
    message = error_of(write_jsonl(tmp_path / "m.jsonl", bad))
    assert "field \"messages[0].role\" has unknown value 'human'" in message
    assert "(format messages)" in message


# ---------------------------------------------------------------------------------------------
# text


def test_text_txt_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first doc\n\n   \nsecond doc\r\nthird\n", "utf-8")
    data = read_file(path)
    assert data.format == "text" and data.shape == "text"
    assert data.records == [{"text": "first doc"}, {"text": "second doc"}, {"text": "third"}]
    assert data.skipped == {}  # blank lines separate documents; they are not skipped records


def test_text_jsonl_and_skips(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "   "}, {"text": "b"}])
    data = read_file(path)
    assert data.format == "text" and data.n_records == 2 and data.skipped == {"empty text": 1}


def test_text_format_on_other_extension(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("line one\nline two\n", "utf-8")
    assert read_file(path, "text").n_records == 2
    assert "not JSON or JSONL" in error_of(path)


# ---------------------------------------------------------------------------------------------
# preference


def test_preference_current_format(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "q"}], "chosen": "good", "rejected": "bad"},
        {
            "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"}],
            "chosen": "good",
            "rejected": "bad",
        },
    ]
    data = read_file(write_jsonl(tmp_path / "p.jsonl", rows))
    assert data.format == "preference" and data.shape == "preference"
    assert data.records[0] == {
        "prompt": msgs(("user", "q")),
        "chosen": msgs(("assistant", "good")),
        "rejected": msgs(("assistant", "bad")),
    }
    assert data.records[1]["prompt"] == msgs(("system", "S"), ("user", "q"))


def test_preference_old_and_unified_formats(tmp_path):
    old = {"question": "q", "response_chosen": "good", "response_rejected": "bad"}
    unified_str = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    unified_msgs = {
        "prompt": msgs(("user", "q")),
        "chosen": msgs(("assistant", "good")),
        "rejected": msgs(("assistant", "bad")),
    }
    expected = dict(unified_msgs)
    for i, row in enumerate([old, unified_str, unified_msgs]):
        data = read_file(write_jsonl(tmp_path / f"p{i}.jsonl", [row]))
        assert data.format == "preference" and data.records == [expected]


def test_preference_errors_and_skips(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "response_chosen": "a"}])
    assert 'field "response_rejected" missing (format preference)' in error_of(path)
    ends_gpt = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"conversations": ends_gpt, "chosen": "c", "rejected": "r"}]
    )
    assert 'field "conversations" must end with a user turn' in error_of(path)
    wrong_role = {"prompt": "q", "chosen": msgs(("user", "c")), "rejected": "r"}
    path = write_jsonl(tmp_path / "p.jsonl", [wrong_role])
    assert 'field "chosen[0].role" must be assistant' in error_of(path)
    rows = [
        {"prompt": "q", "chosen": "c", "rejected": "r"},
        {"prompt": "q", "chosen": " ", "rejected": "r"},
        {"question": "q", "response_chosen": "c", "response_rejected": ""},
        {"prompt": "", "chosen": "c", "rejected": "r"},
    ]
    data = read_file(write_jsonl(tmp_path / "p.jsonl", rows))
    assert data.skipped == {"empty chosen": 1, "empty rejected": 1, "empty prompt": 1}


# ---------------------------------------------------------------------------------------------
# file-level errors, encoding, hashes


def test_missing_file(tmp_path):
    with pytest.raises(MedtuneError, match=r"x\.jsonl: no such file"):
        read_file(tmp_path / "x.jsonl")


def test_missing_file_suggests_sibling(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    assert "did you mean 'train.jsonl'" in error_of(tmp_path / "trian.jsonl")


def test_empty_files(tmp_path):
    for name, content in [
        ("a.jsonl", ""),
        ("b.json", "  \n\n"),
        ("c.json", "[]"),
        ("d.txt", "\n\n"),
    ]:
        (tmp_path / name).write_text(content, "utf-8")
        assert error_of(tmp_path / name).endswith(f"{name}: empty (no records)")


def test_all_records_skipped_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": ""}] * 2)
    message = error_of(path)
    assert "a.jsonl: empty" in message and "empty output 2" in message


def test_invalid_json_line(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = [json.dumps({"text": "ok"})] * 16 + ['{"text": "a" "b"}']
    path.write_text("\n".join(lines) + "\n", "utf-8")
    message = error_of(path)
    assert f"{path}:17: invalid JSON (Expecting ',' delimiter" in message


def test_invalid_json_array(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n', "utf-8")
    assert f"{path}:3: invalid JSON" in error_of(path)


def test_record_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}, ["text", "b"]])
    assert ":2: record must be a JSON object, got list (format text)" in error_of(path)


def test_undetectable_format(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"ask_text": "q", "reply": "a"}])
    message = error_of(path)
    assert "x.jsonl:1: cannot detect the data format" in message
    assert "ask_text, reply" in message


def test_bom_single_object_and_sha256(tmp_path):
    path = tmp_path / "x.json"
    body = json.dumps({"instruction": "Q", "output": "A"}, indent=2)
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    data = read_file(path)
    assert data.n_records == 1 and data.format == "alpaca"
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_not_utf8_nor_gb18030(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\x80\x80"}\n')
    assert f"{path}:2: not UTF-8 text (byte 0x80); pass --encoding" in error_of(path)


def test_gb18030_detected(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + '{"text": "内科"}\n'.encode("gb18030"))
    assert [r["text"] for r in read_file(path).records] == ["ok", "内科"]


def test_explicit_format_mismatch_names_field(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    assert 'field "conversations" missing (format sharegpt)' in error_of(path, "sharegpt")


# ---------------------------------------------------------------------------------------------
# several files, datasets


def test_read_files_same_shape(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    s = write_jsonl(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
    )
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "doc"}])
    files = read_files([a, s])
    assert [f.format for f in files] == ["alpaca", "sharegpt"]
    with pytest.raises(MedtuneError, match=r"t\.jsonl: format text gives text records"):
        read_files([a, s, t])
    assert read_files(str(t))[0].format == "text"


def test_to_dataset_columns(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}] * 2)
    s = write_jsonl(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
    )
    ds = to_dataset(read_files([a, s]))
    assert ds.column_names == ["messages"] and len(ds) == 3
    assert ds[2]["messages"] == msgs(("user", "q"), ("assistant", "a"))
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "c", "rejected": "r"}])
    assert sorted(to_dataset([read_file(p)]).column_names) == ["chosen", "prompt", "rejected"]
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "doc"}])
    assert to_dataset(read_files([t])).column_names == ["text"]


def test_filedata_fields():
    data = FileData("x.jsonl", "text", [{"text": "a"}], {"empty text": 1}, "00")
    assert data.n_records == 1 and data.shape == "text"


# ---------------------------------------------------------------------------------------------
# real files from /work/shared/data (skipped when absent)


def shared(relative):
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.parametrize(
    "relative, fmt, count",
    [
        ("huatuo/llama_data.json", "alpaca", 8658),
        ("medicalgpt/sft/medical_sft_1K_format.jsonl", "sharegpt", 1000),
        ("medicalgpt/reward/dpo_zh_500.jsonl", "preference", 500),
        ("medicalgpt/reward/test.json", "preference", 100),
        ("medicalgpt/pretrain/fever.txt", "text", 985),
        ("huangdi/sample.json", "alpaca", 100),
    ],
)
def test_shared_data(relative, fmt, count):
    data = read_file(shared(relative))
    assert (data.format, data.n_records, data.skipped) == (fmt, count, {})
    assert len(data.sha256) == 64


def test_shared_dpo_system_turns():
    data = read_file(shared("medicalgpt/reward/dpo_zh_500.jsonl"))
    with_system = [r for r in data.records if r["prompt"][0]["role"] == "system"]
    assert len(with_system) == 84
    assert all(r["prompt"][-1]["role"] == "user" for r in data.records)


def test_shared_zhongjing_mixed_rows():
    # 1,000 multi-turn alpaca rows with history, then 144 {instruct, output} safety rows.
    data = read_file(shared("zhongjing/CMtMedQA_test.json"))
    assert data.format == "alpaca" and data.n_records == 1144
    assert sum(len(r["messages"]) > 2 for r in data.records) >= 900
    assert all(len(r["messages"]) == 2 for r in data.records[1000:])
