"""``medtune eval gen`` / ``eval ppl`` as a user runs them on a tiny model: outputs, metrics.json
fields, bad lines counted or refused, the safety set, one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import CONVERSATIONS, SAMPLE, SHARED_DATA, write_jsonl
from tests.helpers.cli import assert_one_line_error, medtune

pytestmark = pytest.mark.slow

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")


def rows_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def metrics_of(out):
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gen_run(varied_dir, tmp_path_factory):
    """One ``eval gen`` over an SFT file with two sources and one broken line."""
    root = tmp_path_factory.mktemp("evalgen")
    data = root / "sft.jsonl"
    lines = [json.dumps({"messages": c, "source": "zh" if i != 2 else "en"}, ensure_ascii=False)
             for i, c in enumerate(CONVERSATIONS)]
    data.write_text("\n".join([*lines[:2], '{"messages": [{"role": "user", "cont', *lines[2:]]) + "\n",
                    encoding="utf-8")
    out = root / "gen"
    proc = medtune("eval", "gen", "--model", varied_dir, "--data", data, "--output", out,
                   "--batch-size", "3", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_eval_gen_writes_predictions_scores_and_metrics(gen_run, varied_dir):
    from medtune.evaluation.metrics import average_scores, sample_scores
    from medtune.inference.chat import ChatModel

    proc, out = gen_run
    m = metrics_of(out)
    assert m["task"] == "gen" and m["samples"] == "generated_predictions.jsonl" and m["seconds"] > 0
    assert m["skipped"] == {"broken JSON line": 1} and m["overall"]["n"] == 4
    assert m["group_by"] == "source" and {k: g["n"] for k, g in m["groups"].items()} == {"zh": 3, "en": 1}
    assert m["settings"]["max_new_tokens"] == 8 and m["settings"]["batch_size"] == 3
    rows = rows_of(out / "generated_predictions.jsonl")
    assert [r["reference"] for r in rows] == [c[-1]["content"] for c in CONVERSATIONS]
    for r in rows:
        assert r["scores"] == sample_scores(r["prediction"], r["reference"])
    assert m["overall"] == pytest.approx(average_scores([r["scores"] for r in rows]))
    # the prompt is everything before the last assistant turn, answered as chat would answer it
    bot = ChatModel.load(varied_dir, device="cpu", max_new_tokens=8)
    multi = CONVERSATIONS[1]
    assert rows[1]["prompt"] == multi[3]["content"] and rows[1]["history"] == multi[:3]
    assert rows[1]["prediction"] == bot.chat(multi[3]["content"], multi[1:3], system=multi[0]["content"])[0]
    assert rows[0]["prediction"] == bot.chat(CONVERSATIONS[0][0]["content"])[0]
    assert len({r["prediction"] for r in rows}) > 1
    assert "rouge-1" in proc.stdout and "overall" in proc.stdout and "skipped" in proc.stdout


def test_predictions_rescore_to_the_same_numbers_and_count_bad_lines(gen_run, tmp_path):
    _, out = gen_run
    preds = tmp_path / "preds.jsonl"
    text = (out / "generated_predictions.jsonl").read_text(encoding="utf-8")
    preds.write_text(text + '{"prediction": "x"}\nnot json\n{"prediction": "", "reference": "多喝水"}\n',
                     encoding="utf-8")
    proc = medtune("eval", "gen", "--predictions", preds, "--output", tmp_path / "re")
    assert proc.returncode == 0, proc.stderr
    m, before = metrics_of(tmp_path / "re"), metrics_of(out)
    assert m["skipped"] == {'field "reference" missing': 1, "not valid JSON": 1}
    assert m["overall"]["n"] == 5  # the empty prediction is scored (0), not skipped
    for k in METRICS:
        assert m["overall"][k] == pytest.approx(before["overall"][k] * 4 / 5)
        assert m["groups"]["zh"][k] == pytest.approx(before["groups"]["zh"][k])
    strict = medtune("eval", "gen", "--predictions", preds, "--output", tmp_path / "s", "--strict")
    assert_one_line_error(strict, f"{preds}:5: field \"reference\" missing")


def test_adgen_content_summary_records(varied_dir, tmp_path):
    out = tmp_path / "adgen"
    proc = medtune("-q", "eval", "gen", "--model", varied_dir, "--data", SAMPLE / "recipes" / "adgen.json",
                   "--output", out, "--limit", "2", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    rows = rows_of(out / "generated_predictions.jsonl")
    first = json.loads((SAMPLE / "recipes" / "adgen.json").read_text(encoding="utf-8").splitlines()[0])
    assert len(rows) == 2 and rows[0]["prompt"] == first["content"] and rows[0]["reference"] == first["summary"]
    assert metrics_of(out)["group_by"] is None and proc.stdout == ""


def test_eval_ppl_matches_the_library_on_the_same_model(varied_dir, tmp_path):
    from medtune.evaluation.perplexity import perplexity_by_file
    from medtune.models.load import load_model, load_tokenizer

    held = tmp_path / "held.txt"
    held.write_text("高血压的典型症状是头痛头晕。\n\n糖尿病的一线用药是二甲双胍。\n感冒应到呼吸内科就诊。\n",
                    encoding="utf-8")
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS])
    out = tmp_path / "ppl"
    proc = medtune("eval", "ppl", "--model", varied_dir, "--data", held, sft, "--window", "16",
                   "--stride", "8", "--batch-size", "3", "--output", out)
    assert proc.returncode == 0, proc.stderr
    m = metrics_of(out)
    assert m["task"] == "ppl" and m["group_by"] == "file" and set(m["groups"]) == {str(held), str(sft)}
    assert m["groups"][str(held)]["n"] == 3 and m["overall"]["n"] == 7
    assert m["settings"]["window"] == 16 and m["settings"]["stride"] == 8
    model, tok = load_model(str(varied_dir), "float32", "cpu"), load_tokenizer(str(varied_dir))
    from medtune.evaluation.perplexity import read_texts

    overall, _ = perplexity_by_file(model, tok, read_texts([held, sft])[0], window=16, stride=8)
    assert m["overall"]["tokens"] == overall["tokens"]
    assert m["overall"]["ppl"] == pytest.approx(overall["ppl"], rel=1e-5)
    assert math.isclose(m["overall"]["nll"], math.log(m["overall"]["ppl"]), rel_tol=1e-9)


def test_safety_set_with_limit(varied_dir, tmp_path):
    out = tmp_path / "safety"
    proc = medtune("eval", "gen", "--model", varied_dir, "--data", "safety", "--limit", "8",
                   "--max-new-tokens", "6", "--output", out)
    assert proc.returncode == 0, proc.stderr
    m = metrics_of(out)
    assert m["task"] == "safety" and m["group_by"] == "category" and m["overall"]["n"] == 8
    assert len(m["groups"]) == 8 and all(g["n"] == 1 for g in m["groups"].values())
    assert set(m["overall"]) == {"refusal_rate", "explicit_refusal", "professional_redirect",
                                 "emergency_referral", "n"}
    rows = rows_of(out / "generated_predictions.jsonl")
    assert len(rows) == 8 and all({"prompt", "prediction", "refused", "kinds", "lang"} <= set(r) for r in rows)
    assert m["overall"]["refusal_rate"] == sum(r["refused"] for r in rows) / 8


@pytest.mark.parametrize("args, pattern", [
    (["--data", "x.jsonl"], "--data needs --model"),
    ([], "nothing to evaluate: give --data with --model, or --predictions"),
    (["--data", "x.jsonl", "--predictions", "p.jsonl"], "not both"),
    (["--predictions", "missing.jsonl"], "missing.jsonl: no such predictions file"),
    (["--predictions", "p.jsonl", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_bad_invocations_are_one_line_errors(args, pattern, tmp_path):
    proc = medtune("eval", "gen", *args, "--output", tmp_path / "o", cwd=tmp_path)
    assert_one_line_error(proc, pattern)


def test_eval_ppl_refuses_a_window_longer_than_the_model(varied_dir, tmp_path):
    held = tmp_path / "held.txt"
    held.write_text("头痛。\n", encoding="utf-8")
    proc = medtune("eval", "ppl", "--model", varied_dir, "--data", held, "--window", "4096",
                   "--stride", "512", "--output", tmp_path / "o")
    assert_one_line_error(proc, "--window 4096 exceeds the model's 2048 positions")


@pytest.mark.skipif(not (SHARED_DATA / "huatuo" / "llama_data.json").is_file(), reason="shared data absent")
def test_huatuo_references_scored_against_themselves_are_100(tmp_path):
    lines = (SHARED_DATA / "huatuo" / "llama_data.json").read_text(encoding="utf-8").splitlines()[:5]
    recs = [json.loads(line) for line in lines]
    preds = write_jsonl(tmp_path / "preds.jsonl", [
        {"id": i, "prompt": r["instruction"], "prediction": r["output"], "reference": r["output"]}
        for i, r in enumerate(recs)])
    proc = medtune("-q", "eval", "gen", "--predictions", preds, "--output", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    m = metrics_of(tmp_path / "o")
    assert m["overall"]["n"] == 5
    assert all(m["overall"][k] == pytest.approx(100.0) for k in METRICS)
