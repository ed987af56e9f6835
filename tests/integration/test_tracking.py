"""train.report_to: the TensorBoard event files a run leaves in its output dir hold every training
log (loss, learning rate, grad norm, tokens/s, the stage's own metrics), read back with
TensorBoard's own reader; each output dir keeps its loss-curve PNG; bad tracker names are refused."""

from __future__ import annotations

import pytest

from medtune.errors import MedtuneError
from medtune.recipes.run import run_stage
from tests.conftest import SAMPLE
from tests.helpers.stages import logged, stage_config

pytestmark = pytest.mark.slow


def _scalars(logdir) -> dict:
    """Return {tag: [(step, value), ...]} of every scalar in the event files under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for run in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(run))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return found


def test_dpo_run_writes_tensorboard_events_with_every_training_log(tiny_dir, tmp_path):
    cfg = stage_config(tiny_dir, SAMPLE / "preference.jsonl", tmp_path / "dpo", "dpo",
                       data={"eval_split": 0.25}, train={"max_steps": 3})
    result = run_stage(cfg, quiet=True)
    scalars = _scalars(result.output / "tensorboard")
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                "train/rewards/margins", "train/rewards/accuracies"):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3], tag
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(logged(result, "loss"))
    assert all(v > 0 for _, v in scalars["train/tokens_per_second"])
    assert logged(result, "tokens_per_second") == pytest.approx([v for _, v in scalars["train/tokens_per_second"]])
    assert scalars["eval/loss"] and scalars["eval/rewards/margins"]  # end-of-epoch and final evaluation
    assert (result.output / "loss.png").stat().st_size > 1000
    assert not (result.output / "checkpoints").exists()


def test_report_to_none_writes_no_events_but_keeps_the_plot(tiny_dir, tmp_path):
    cfg = stage_config(tiny_dir, SAMPLE / "sharegpt.jsonl", tmp_path / "sft", "sft",
                       train={"max_steps": 2, "report_to": "none"})
    result = run_stage(cfg, quiet=True)
    assert not (result.output / "tensorboard").exists()
    assert (result.output / "loss.png").is_file()
    assert len(logged(result, "tokens_per_second")) == 2  # the log history has it whatever the tracker


@pytest.mark.parametrize("value, message", [
    ("tensorbord", "did you mean 'tensorboard'"),
    (["none", "tensorboard"], "none cannot be combined with tensorboard"),
])
def test_bad_report_to_is_refused_when_the_config_loads(tiny_dir, tmp_path, value, message):
    with pytest.raises(MedtuneError, match=message):
        stage_config(tiny_dir, SAMPLE / "sharegpt.jsonl", tmp_path / "x", "sft", train={"report_to": value})


def test_a_tracker_whose_package_is_missing_is_refused_in_one_line(tiny_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MedtuneError, match="train.report_to: wandb needs the wandb package"):
        stage_config(tiny_dir, SAMPLE / "sharegpt.jsonl", tmp_path / "x", "sft", train={"report_to": ["wandb"]})
