"""Every kill point of a run leaves a state the next run with the same config handles without
--overwrite (issue #14): the save sequence is interrupted at each step in turn (deterministically,
by raising where a SIGKILL could land; tests/e2e/test_resume_kill.py kills real processes), and
the re-run ends with the uninterrupted run's weights and step count, training no extra step. A
data file edited between the kill and the resume is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import medtune.recipes.run as run
import medtune.recipes.run_dir as run_dir
from medtune.errors import MedtuneError
from medtune.recipes.run import run_stage
from tests.integration.test_train import config, sft_data

pytestmark = pytest.mark.slow
# 16 rows at batch 3 -> 6 steps an epoch; 1.5 epochs -> 9 steps, the last checkpoint mid-epoch
# (resuming from it, transformers alone trains a 10th step).
TRAIN = {"epochs": 1.5, "batch_size": 3, "save_steps": 2, "logging_steps": 1}


class Killed(Exception):
    """Stands for a SIGKILL at one point of the save sequence."""


def die(*args, **kwargs):
    raise Killed


def after(real):
    def wrapper(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed
    return wrapper


def drop_checkpoints_then_die(out):
    shutil.rmtree(out / run_dir.CHECKPOINTS)
    raise Killed


KILL_POINTS = {
    "after the final checkpoint": ("save_outputs", lambda real: die),
    "after the weights": ("save_outputs", after),
    "after the log history": ("write_log_history", after),
    "after the pending lineage": ("finish_record", lambda real: die),
    "after the checkpoints are removed": ("finish_record", lambda real: drop_checkpoints_then_die),
}


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    cfg = config(tiny_dir, sft_data(tmp), tmp / "out", adapter={"method": "full"}, train=TRAIN)
    return run_stage(cfg, quiet=True)


def weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_at_each_point_of_the_save_sequence_is_finished_by_the_rerun(point, reference, tiny_dir, tmp_path,
                                                                           monkeypatch):
    name, make = KILL_POINTS[point]
    module = run_dir if name == "finish_record" else run
    cfg = config(tiny_dir, sft_data(tmp_path), tmp_path / "out", adapter={"method": "full"}, train=TRAIN)
    with monkeypatch.context() as m:
        m.setattr(module, name, make(getattr(module, name)))
        with pytest.raises(Killed):
            run_stage(cfg, quiet=True)
    out = tmp_path / "out"
    assert not (out / "lineage.json").exists()
    steps = []
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    result = run_stage(cfg, quiet=True, callbacks=[CountSteps()])  # no --overwrite
    assert steps == [], f"the re-run trained steps {steps}"
    lineage = json.loads((out / "lineage.json").read_text(encoding="utf-8"))
    assert lineage["metrics"]["global_steps"] == reference.metrics["global_steps"] == 9
    assert result.metrics["global_steps"] == 9 and result.metrics["train_loss"] > 0
    assert not (out / "checkpoints").exists() and not (out / run_dir.PENDING).exists()
    ref, got = weights(reference.output), weights(out)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)


def test_a_data_file_edited_between_the_kill_and_the_resume_is_refused(tiny_dir, tmp_path, monkeypatch):
    data = sft_data(tmp_path)
    cfg = config(tiny_dir, data, tmp_path / "out", adapter={"method": "full"},
                 train={"max_steps": 6, "save_steps": 2, "batch_size": 4})

    from transformers import TrainerCallback

    class KillAtStep4(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise Killed

    with pytest.raises(Killed):
        run_stage(cfg, quiet=True, callbacks=[KillAtStep4()])
    data.write_text(data.read_text(encoding="utf-8").replace("头痛", "头疼"), encoding="utf-8")
    with pytest.raises(MedtuneError, match=rf"{data}: changed since the interrupted run in .* started; "
                                           "restore it, or pass --overwrite"):
        run_stage(cfg, quiet=True)
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-4").is_dir()  # nothing was touched
    data.unlink()
    with pytest.raises(MedtuneError, match="is gone since the interrupted run"):
        run_stage(cfg, quiet=True)
