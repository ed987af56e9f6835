"""`medtune data convert|clean|generate` through the real command line."""

import functools
import json

from tests.helpers import cli
from tests.helpers.fake_openai import FakeOpenAI

medtune = functools.partial(cli.medtune, quiet=True)


def lines(path):
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()]


BAD_ROWS = (
    b'{"conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"hello"}]}\n'
    b'{"conversations":[{"from":"gpt","value":"x"},{"from":"human","value":"y"}]}\n'
    b'{"conversations":[{"from":"human","val\n'
    b'{"conversations":[]}\n'
    b'{"conversations":[{"from":"human","value":"\x80\x80"},{"from":"gpt","value":"a"}]}\n'
    b'{"conversations":[{"from":"human","value":"a"},{"from":"human","value":"b"}]}\n'
)


def test_convert_bad_input_counted_then_strict(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(BAD_ROWS)
    proc = medtune("data", "convert", src, "-o", tmp_path / "out.jsonl", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "read         6  written         1  skipped       5" in proc.stdout
    for where in ("bad.jsonl:2: field \"conversations[0]\" is an assistant turn", "bad.jsonl:3: invalid JSON",
                  "bad.jsonl:4: empty conversation", "bad.jsonl:5: not UTF-8 text (byte 0x80)",
                  "bad.jsonl:6: field \"conversations[1]\" is a user turn"):
        assert where in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["files"][0]["skipped"]["broken JSON line"] == 1
    assert sum(report["files"][0]["skipped"].values()) == 5
    assert lines(tmp_path / "out.jsonl") == [{"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "source": "bad"}]

    strict = medtune("data", "convert", src, "-o", tmp_path / "s.jsonl", "--strict")
    assert strict.returncode == 2
    assert strict.stderr.strip().splitlines()[-1].startswith(f"error: {src}:2: field \"conversations[0]\"")
    assert not (tmp_path / "s.jsonl").exists()


def test_convert_preference_and_choice_errors(tmp_path):
    pref = tmp_path / "pref.jsonl"
    pref.write_text(json.dumps({"question": "q", "response_chosen": "a", "response_rejected": "a"}) + "\n"
                    + json.dumps({"question": "q", "response_chosen": "a", "response_rejected": "b"}) + "\n")
    proc = medtune("data", "convert", pref, "-o", tmp_path / "p.jsonl")
    assert 'pref.jsonl:1: fields "response_chosen" and "response_rejected" are identical' in proc.stdout
    choice = tmp_path / "mc.json"
    choice.write_text(json.dumps([{"question": "q", "options": "(A) x\n(B) y", "answer": "(E)"},
                                  {"question": "q2", "options": "(A) x\n(B) y", "answer": "(B)"}]))
    proc = medtune("data", "convert", choice, "-o", tmp_path / "c.jsonl", "--strict")
    assert proc.returncode == 2
    assert 'mc.json:1: field "answer" letter "E" is not among the options A, B' in proc.stderr


def test_convert_csv_with_map_and_columns(tmp_path):
    src = tmp_path / "d.csv"
    src.write_bytes("department,title,ask,answer\n内科,头痛,头痛怎么办,多休息\n".encode("gb18030"))
    proc = medtune("data", "convert", src, "--map", "ask=query", "--map", "answer=response",
                   "-o", tmp_path / "o.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert lines(tmp_path / "o.jsonl") == [{"messages": [
        {"role": "user", "content": "头痛怎么办"}, {"role": "assistant", "content": "多休息"}],
        "category": "内科", "source": "d"}]
    adgen = tmp_path / "adgen.json"
    adgen.write_text(json.dumps({"content": "类型#裙", "summary": "一条裙子"}, ensure_ascii=False) + "\n")
    proc = medtune("data", "convert", adgen, "--prompt-column", "content", "--response-column", "summary",
                   "-o", tmp_path / "a.jsonl")
    assert lines(tmp_path / "a.jsonl")[0]["messages"][0]["content"] == "类型#裙"
    assert medtune("data", "convert", adgen, "--map", "oops", "-o", tmp_path / "x.jsonl").returncode == 2


def _sft(q, a, **meta):
    return {"instruction": q, "output": a, **meta}


def test_clean_end_to_end(tmp_path):
    rows = [
        _sft("头痛怎么办？", "建议多休息，保持充足睡眠，必要时服用止痛药。"),
        _sft("头痛怎么办?", "建议多休息，保持充足睡眠，必要时服用止痛药。"),  # exact dup after normalising
        _sft("发烧了怎么办？", "我建议您多喝水。" * 12),  # repetitive
        _sft("患者张伟，男，45岁，电话13812345678，咳嗽一周怎么办？", "建议拍胸片检查，排除肺炎的可能。"),
        _sft("What is the first-line treatment of uncomplicated hypertension in adults today?",
             "Thiazide diuretics, ACE inhibitors, ARBs or calcium channel blockers."),
        _sft("腹泻怎么办？", "注意补液，"),  # truncated
        _sft("胃痛怎么办？", ""),  # empty output: unreadable (skipped by the reader)
    ]
    src = tmp_path / "sft.json"  # JSONL in a .json file, as HuaTuo ships it
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "What is the first-line treatment of uncomplicated "
                                             "hypertension in adults today?",
                                 "options": {"A": "x", "B": "y"}, "answer": "A"}) + "\n")
    out, report = tmp_path / "clean.jsonl", tmp_path / "report.json"
    proc = medtune("data", "clean", src, "-o", out, "--report", report, "--decontaminate", bench)
    assert proc.returncode == 0, proc.stderr
    kept = lines(out)
    assert [r["messages"][0]["content"] for r in kept] == [
        "头痛怎么办？", "患者[NAME]，男，45岁，电话[PHONE]，咳嗽一周怎么办？"]
    r = json.loads(report.read_text())
    assert r["removed"] == {"exact duplicate": 1, "repetitive": 1, "truncated": 1, "benchmark leak": 1}
    assert r["unreadable"] == 1 and r["kept"] == 2 and r["read"] == 7
    assert r["pii_replaced"] == {"NAME": 1, "PHONE": 1}
    assert r["examples"]["exact duplicate"][0]["where"].endswith("sft.json:2")
    assert "first-line treatment" in r["examples"]["benchmark leak"][0]["note"]
    assert "personal data replaced: PHONE 1, NAME 1" in proc.stdout

    off = medtune("data", "clean", src, "-o", tmp_path / "raw.jsonl", "--no-pii", "--no-dedup",
                  "--no-quality", "--no-near-dup")
    assert off.returncode == 0, off.stderr
    assert len(lines(tmp_path / "raw.jsonl")) == 6
    assert "13812345678" in (tmp_path / "raw.jsonl").read_text("utf-8")


def test_generate_kg(tmp_path):
    triples = tmp_path / "kg.csv"
    triples.write_text("head,relation,tail\n感冒,症状,发热\n感冒,症状,咳嗽\n感冒,治疗,休息\n感冒,,x\n", "utf-8")
    out = tmp_path / "kg.jsonl"
    proc = medtune("data", "generate", "kg", triples, "-o", out, "--phrasings", "2")
    assert proc.returncode == 0, proc.stderr
    recs = lines(out)
    assert len(recs) == 4  # 2 head+relation groups x 2 phrasings
    assert "发热、咳嗽" in recs[0]["messages"][1]["content"]
    assert "kg.csv:5" in proc.stdout
    assert medtune("data", "generate", "kg", triples, "-o", out, "--strict").returncode == 2


def test_generate_passage_against_fake_endpoint_resumes_from_cache(tmp_path):
    passages = tmp_path / "p.txt"
    passages.write_text("流行性感冒由流感病毒引起。常见症状包括发热、头痛和肌肉酸痛。\n\n"
                        "高血压患者应限制钠盐摄入。规律服药并监测血压非常重要。\n", "utf-8")
    out = tmp_path / "qa.jsonl"
    with FakeOpenAI(api_key="sekrit") as server:
        args = ("data", "generate", "passage", passages, "-o", out, "--endpoint", server.url,
                "--model", "fake", "--min-chars", "10", "--min-support", "0.6", "--api-key", "sekrit")
        proc = medtune(*args)
        assert proc.returncode == 0, proc.stderr
        first = server.requests
        assert first == 2
        assert "2 not grounded in the passage, 4 kept" in proc.stdout
        again = medtune(*args)
        assert again.returncode == 0 and server.requests == first  # all from the cache
        assert "2 from cache" in again.stdout
        wrong = medtune(*args[:-2], "--api-key", "nope", "--cache", tmp_path / "c2")
        assert wrong.returncode == 2 and "refused the API key" in wrong.stderr
    recs = lines(out)
    assert len(recs) == 4 and all(r["source"] == "passage" for r in recs)


def test_mix_split_stats(tmp_path):
    a = tmp_path / "med.jsonl"
    a.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"问题{i}"},
                                                  {"role": "assistant", "content": f"回答{i}"}]},
                                    ensure_ascii=False) + "\n" for i in range(30)), "utf-8")
    b = tmp_path / "general.json"  # not unified: converted on the fly
    b.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]))
    out = tmp_path / "mix.jsonl"
    proc = medtune("data", "mix", f"{a}:0.5", f"{b}:0.5", "--total", "20", "--seed", "3", "-o", out)
    assert proc.returncode == 0, proc.stderr
    recs = lines(out)
    assert len(recs) == 20 and sum(r["source"] == "med" for r in recs) == 10
    summary = json.loads((tmp_path / "mix.jsonl.mix.json").read_text())
    assert summary["sources"]["general"] == {"available": 5, "taken": 10, "upsampled": True}
    again = tmp_path / "mix2.jsonl"
    medtune("data", "mix", f"{a}:0.5", f"{b}:0.5", "--total", "20", "--seed", "3", "-o", again)
    assert again.read_bytes() == out.read_bytes()
    assert medtune("data", "mix", f"{a}:0.5", b, "-o", tmp_path / "x.jsonl").returncode == 2

    proc = medtune("data", "split", out, "--val", "0.2", "-o", tmp_path / "sp")
    assert proc.returncode == 0, proc.stderr
    val = lines(tmp_path / "sp" / "validation.jsonl")
    assert len(val) == 4 and sum(r["source"] == "med" for r in val) == 2
    assert len(lines(tmp_path / "sp" / "train.jsonl")) == 16

    png, stats = tmp_path / "len.png", tmp_path / "stats.json"
    proc = medtune("data", "stats", out, "--plot", png, "--json", stats)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(stats.read_text())
    assert s["records"] == 20 and s["duplicates"]["exact"] == 5  # the upsampled copies
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
