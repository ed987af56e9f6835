"""medtune.files: atomic writes keep the old file when the writer fails; JSONL errors name file:line."""

from __future__ import annotations

import pytest

from medtune.errors import MedtuneError
from medtune.files import (
    JsonLineError,
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    iter_jsonl,
    numbered_lines,
    parse_json_object,
)


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old", encoding="utf-8")
    atomic_write_text(path, "新内容\n")
    assert path.read_text(encoding="utf-8") == "新内容\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failing_writer_leaves_the_old_file_intact_and_no_temp(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(path) as tmp:
        tmp.write_text("half a fi", encoding="utf-8")
        assert tmp.parent == path.parent and tmp != path
        raise RuntimeError("disk full")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_a_failing_writer_creates_nothing_when_there_was_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_output(tmp_path / "new.gguf") as tmp:
        tmp.write_bytes(b"GGUF")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_two_writers_of_one_path_get_different_temp_files(tmp_path):
    with atomic_output(tmp_path / "x") as a, atomic_output(tmp_path / "x") as b:
        a.write_text("a")
        b.write_text("b")
        assert a != b
    assert (tmp_path / "x").read_text() == "a"  # the outer block ends last


def test_iter_jsonl_numbers_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": "二"}\n', encoding="utf-8")
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": "二"})]


@pytest.mark.parametrize("line,reason", [
    ('{"a": 1 "b": 2}', "invalid JSON (Expecting ',' delimiter at column 9)"),
    ("[1, 2]", "expected a JSON object per line, got list"),
    ('"text"', "expected a JSON object per line, got str"),
])
def test_iter_jsonl_errors_name_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": true}\n\n' + line + "\n", encoding="utf-8")
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"ok": True})  # lazily: the good line comes before the error
    with pytest.raises(MedtuneError) as err:
        next(rows)
    assert str(err.value) == f"{path}:3: {reason}"
    assert isinstance(err.value, JsonLineError) and err.value.reason == reason


def test_parse_json_object_reads_bytes_and_reports_bad_utf8():
    assert parse_json_object('{"k": "值"}'.encode()) == {"k": "值"}
    with pytest.raises(JsonLineError, match=r"^f.jsonl:9: invalid JSON \(not UTF-8\)$"):
        parse_json_object(b'{"k": "\xff"}', "f.jsonl:9")


def test_numbered_lines_counts_from_one_over_blank_lines():
    assert list(numbered_lines("a\n\n \nb\n")) == [(1, "a"), (4, "b")]


# ------------------------------------------------------------------ guard_outputs, atomic_dir


def test_guard_refuses_an_output_equal_to_inside_or_holding_an_input(tmp_path):
    from medtune.files import guard_outputs

    (tmp_path / "adapter").mkdir()
    (tmp_path / "in.jsonl").write_text("{}\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    for out, how in ((tmp_path / "adapter", "is"), (tmp_path / "adapter" / "merged", "lies inside"),
                     (tmp_path, "contains"), (tmp_path / "link.jsonl", "is")):
        with pytest.raises(MedtuneError, match=f"-o '.*' {how} the input --adapter|-o '.*' {how} the input"):
            guard_outputs({"-o": out}, {"--adapter": tmp_path / "adapter", "input": [tmp_path / "in.jsonl"]})
    guard_outputs({"-o": tmp_path / "out.jsonl", "--report": None}, {"input": [tmp_path / "in.jsonl"]})


def test_guard_refuses_two_outputs_on_one_path_and_an_output_symlink_loop(tmp_path):
    from medtune.files import guard_outputs

    with pytest.raises(MedtuneError, match="--report '.*' are the same path"):
        guard_outputs({"-o": tmp_path / "a", "--report": tmp_path / "a"}, {})
    (tmp_path / "x").symlink_to(tmp_path / "y")
    (tmp_path / "y").symlink_to(tmp_path / "x")
    with pytest.raises(MedtuneError, match="symlink loop"):
        guard_outputs({"-o": tmp_path / "x"}, {})


def test_atomic_dir_swaps_in_on_success_and_keeps_the_old_dir_on_failure(tmp_path):
    from medtune.files import atomic_dir

    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
        raise RuntimeError("save failed")
    assert [p.name for p in out.iterdir()] == ["old.bin"]
    with atomic_dir(out) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert [p.name for p in out.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_atomic_output_refuses_a_directory(tmp_path):
    with pytest.raises(MedtuneError, match="is a directory"), atomic_output(tmp_path):
        pass
