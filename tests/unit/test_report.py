"""eval report: runs and eval dirs found (also one level down), tables carry the numbers, charts
and loss curves embedded, samples side by side, bad inputs named."""

from __future__ import annotations

import json

import pytest

from medtune.errors import MedtuneError
from medtune.evaluation.report import collect, flat_metrics, write_report
from medtune.evaluation.results import EvalResult, write_result


def fake_run(path, stage, losses):
    path.mkdir(parents=True)
    (path / "lineage.json").write_text(json.dumps({
        "stage": stage, "parent_model": "/x/base", "data": [{"path": "/d/train.jsonl", "records": 12}],
        "metrics": {"train_loss": losses[-1], "global_steps": len(losses)}, "wall_time_s": 3.5}))
    (path / "log_history.json").write_text(json.dumps([{"step": i + 1, "loss": v} for i, v in enumerate(losses)]))
    return path


def fake_eval(path, model, acc, preds):
    result = EvalResult(task="choice", model=model, data=["bench.json"], overall={"accuracy": acc, "n": 4},
                        group_by="subject", groups={"anatomy": {"accuracy": acc / 2, "n": 2},
                                                    "virology": {"accuracy": acc, "n": 2}},
                        skipped={"no answer found": 1}, samples="predictions.jsonl")
    write_result(result, path, quiet=True)
    (path / "predictions.jsonl").write_text("".join(
        json.dumps({"id": i, "question": f"Q{i}|pipe", "answer": "A", "prediction": p}) + "\n" for i, p in enumerate(preds)))
    return path


def test_report_compares_runs_and_evals(tmp_path):
    pipe = tmp_path / "pipe"
    fake_run(pipe / "pt", "pt", [3.0, 2.5, 2.0])
    fake_run(pipe / "sft", "sft", [2.0, 1.0])
    (pipe / "base").mkdir()  # neither a run nor an eval: ignored inside a container dir
    fake_eval(tmp_path / "ev" / "before", "base", 0.25, ["B", "C", "A", "D"])
    fake_eval(tmp_path / "ev" / "after", "sft", 0.75, ["A", "A", "A", "C"])
    md, page = write_report([pipe, tmp_path / "ev"], tmp_path / "out", n_samples=3)
    text = md.read_text()
    assert "| pt | pt | base | train.jsonl (12) | 2.0000 | - | 3 | 3.5000 |" in text
    assert "| before | 0.2500 | 4 | bench.json | no answer found: 1 |" in text
    assert "| after | 0.7500 | 4 |" in text
    assert "| 1 | Q1\\|pipe | A | A | C |" in text  # sample answers side by side, pipes escaped
    assert (tmp_path / "out" / "groups_choice.png").stat().st_size > 5000
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2 and "<script" not in html
    assert "Q1|pipe" in html


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
