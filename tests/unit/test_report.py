"""eval report: runs and eval dirs found (also one level down); what a person reads first is right:
a headline sentence per comparison, percentages, the final training loss and the eval loss, the
model and n behind each number, right / wrong marks on sample answers; Chinese drawn with an
embedded font; bad inputs named."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest

from medtune.errors import MedtuneError
from medtune.evaluation import fonts, headlines
from medtune.evaluation.report import collect, flat_metrics, write_report
from medtune.evaluation.results import EvalResult, write_result


def fake_run(path, stage, losses, eval_losses=()):
    path.mkdir(parents=True)
    (path / "lineage.json").write_text(json.dumps({
        "stage": stage, "parent_model": "/x/base", "data": [{"path": "/d/train.jsonl", "records": 12}],
        "metrics": {"train_loss": sum(losses) / len(losses), "global_steps": len(losses)}, "wall_time_s": 95.0}))
    history = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
    history += [{"step": len(losses), "eval_loss": v} for v in eval_losses]
    (path / "log_history.json").write_text(json.dumps(history))
    return path


def fake_eval(path, model, acc, preds, correct=None, sizes=None):
    result = EvalResult(task="choice", model=model, data=["bench.json"], overall={"accuracy": acc, "n": 4},
                        group_by="subject", groups={"解剖学": {"accuracy": acc / 2, "n": 2},
                                                    "virology": {"accuracy": acc, "n": 2}},
                        skipped={"no answer found": 1}, samples="predictions.jsonl", sizes=sizes or {})
    write_result(result, path, quiet=True)
    rows = [{"id": i, "question": f"Q{i}|pipe", "answer": "A", "prediction": p,
             **({"correct": correct[i]} if correct else {})} for i, p in enumerate(preds)]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture
def report(tmp_path):
    pipe = tmp_path / "pipe"
    fake_run(pipe / "pt", "pt", [3.0, 2.5, 2.0], eval_losses=[2.2, 2.1])
    fake_run(pipe / "sft", "sft", [2.0, 1.0])
    (pipe / "base").mkdir()  # neither a run nor an eval: ignored inside a container dir
    fake_eval(tmp_path / "ev" / "before", "runs/base", 0.25, ["B", "C", "A", "D"], [False, False, True, False])
    fake_eval(tmp_path / "ev" / "after", "runs/sft", 0.75, ["A", "A", "甲", "C"], [True, True, False, False])
    md, page = write_report([pipe, tmp_path / "ev" / "before", tmp_path / "ev" / "after"], tmp_path / "out",
                            n_samples=3)
    return md.read_text(encoding="utf-8"), page.read_text(encoding="utf-8"), tmp_path


def test_headlines_percentages_final_loss_model_and_n(report):
    text, _, _ = report
    assert "Inputs: training runs pt, sft; evaluations before (choice), after (choice)." in text
    assert "- pt: training loss 3.000 at step 1 → 2.000 at step 3 (final); eval loss 2.100." in text
    assert "- sft: training loss 2.000 at step 1 → 1.000 at step 2 (final)." in text
    # final loss (not the run's mean, 2.5), the mean beside it, the last eval loss, time in minutes
    assert "| pt | pt | base | train.jsonl (12) | 2.0000 (step 3) | 2.5000 | 2.1000 | 3 | 1 min 35 s |" in text
    assert "- Accuracy: before 25.0% → after 75.0% (n=4 each); best: after, +50.0 points over before." in text
    assert "| before | runs/base | 25.0% (n=4) | bench.json | no answer found: 1 |" in text
    assert "| after | runs/sft | 75.0% (n=4) |" in text


def test_samples_carry_marks_and_disagreements_come_first(report):
    text, page, _ = report
    # ids 0 and 1 (before wrong, after right) and 2 (before right, after wrong) beat id 3 (both wrong)
    assert "| 0 | Q0\\|pipe | A | ✗ B | ✓ A |" in text
    assert "| 2 | Q2\\|pipe | A | ✓ A | ✗ 甲 |" in text
    assert "| 3 | Q3" not in text
    assert "<span class='bad'>✗</span> B</td><td><span class='ok'>✓</span> A</td>" in page
    assert "Q1|pipe" in page


def test_html_is_one_file_with_images_and_the_cjk_glyphs_it_uses(report):
    _, page, tmp_path = report
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page
    assert (tmp_path / "out" / "groups_choice.png").stat().st_size > 5000
    face = re.search(r"@font-face\{font-family:'medtune CJK';src:url\(data:font/woff;base64,([A-Za-z0-9+/=]+)\) "
                     r"format\('woff'\);unicode-range:([^}]*)\}", page)
    assert face, "no embedded CJK font"
    from fontTools.ttLib import TTFont

    embedded = TTFont(io.BytesIO(base64.b64decode(face.group(1))))
    held = {chr(c) for c in embedded.getBestCmap()}
    assert held == {"甲"}  # only what the page's text shows (解剖学 is in the chart only)
    assert set(face.group(2).split(",")) == {f"U+{ord(c):X}" for c in held}
    assert "font-family:'medtune CJK', system-ui" in page and "'Noto Sans CJK SC'" in page


def test_n_per_metric_when_metrics_count_different_items(tmp_path):
    write_result(EvalResult(task="factqa", model="runs/sft", overall={"heldout_accuracy": 0.8, "unseen_accuracy": 0.1,
                                                                    "n": 360}, sizes={"unseen_accuracy": 40}),
                 tmp_path / "ev" / "sft", quiet=True)
    md, _ = write_report([tmp_path / "ev"], tmp_path / "out")
    text = md.read_text(encoding="utf-8")
    assert "| sft | runs/sft | 80.0% (n=360) | 10.0% (n=40) |" in text
    assert "- Unseen accuracy: sft 10.0% (n=40)." in text


def test_headline_wording():
    h = headlines.metric_headline
    assert h("perplexity", [("pt", 12.0, 10), ("sft", 9.5, 10)]) == \
        "Perplexity: pt 12 → sft 9.5 (n=10 each); best: sft, -2.5 over pt."
    assert h("accuracy", [("a", 0.5, 4), ("b", 0.5, 8)]) == \
        "Accuracy: a 50.0% → b 50.0% (n=a 4, b 8); none is better than a."
    assert headlines.format_value("rouge-l", 0.41234) == "0.4123"  # not a rate by name: no percent
    assert headlines.format_value("accuracy", 3.0) == "3"  # a rate out of [0, 1] is not a percentage


def test_plots_draw_cjk_without_missing_glyphs(tmp_path):
    import warnings

    from medtune.evaluation.plots import plot_grouped_bars, plot_losses

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_grouped_bars(["解剖学", "病毒学"], {"基线": [0.5, 0.25], "sft": [0.75, 1.0]}, "准确率", tmp_path / "b.png",
                          metric="accuracy")
        plot_losses({"预训练": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]}, tmp_path / "l.png")
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert (tmp_path / "b.png").stat().st_size > 5000


def test_collect_rejects_what_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedtuneError, match="no lineage.json or metrics.json"):
        collect([tmp_path / "empty"])
    with pytest.raises(MedtuneError, match="not a directory"):
        collect([tmp_path / "nope"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"accuracy": 1}')
    with pytest.raises(MedtuneError, match="not a medtune eval result"):
        collect([bad])


def test_flat_metrics_joins_nested_numbers():
    assert flat_metrics({"a": 1, "b": {"c": 2.5, "d": "x"}, "e": True}) == {"a": 1, "b/c": 2.5}


def test_module_doctests_pass():
    import doctest

    assert doctest.testmod(headlines).failed == 0 and doctest.testmod(fonts).failed == 0


def test_samples_show_each_set_the_rows_name(tmp_path):
    for name, model in (("pt", "runs/pt"), ("sft", "runs/sft")):
        folder = tmp_path / name
        write_result(EvalResult(task="factqa", model=model, overall={"heldout_accuracy": 0.5, "n": 4},
                                samples="p.jsonl"), folder, quiet=True)
        rows = [{"id": f"{part}-{i}", "prompt": f"{part} {i}", "reference": "x", "prediction": "x",
                 "correct": part == "heldout" and (name == "sft" or i == 0), "set": part}
                for part in ("heldout", "unseen") for i in range(4)]
        (folder / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md, _ = write_report([tmp_path / "pt", tmp_path / "sft"], tmp_path / "out", n_samples=2)
    shown = re.findall(r"^\| ((?:heldout|unseen)-\d) \|", md.read_text(encoding="utf-8"), re.MULTILINE)
    assert shown == ["heldout-1", "heldout-2", "unseen-0", "unseen-1"]  # 1 and 2: pt wrong, sft right


def test_cli_writes_both_files_and_refuses_an_output_inside_an_input(tmp_path, capsys):
    from medtune.cli.main import main

    fake_run(tmp_path / "runs" / "pt", "pt", [2.0, 1.5])
    assert main(["eval", "report", str(tmp_path / "runs"), "--output", str(tmp_path / "rep")]) == 0
    assert "report ->" in capsys.readouterr().out
    assert "- pt: training loss 2.000 at step 1 → 1.500 at step 2 (final)." in \
        (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert main(["eval", "report", str(tmp_path / "runs"), "--output", str(tmp_path / "runs" / "pt")]) == 2
