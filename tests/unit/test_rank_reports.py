"""Under torchrun only rank 0 reports: "[stage] done ..." and the pipeline's progress lines come
once, not once per rank with each rank's own loss (issue #14)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from medtune.cli import commands
from medtune.recipes.run import StageResult

RESULT = StageResult(Path("runs/sft"), {"train_loss": 1.25, "global_steps": 4, "train_runtime_s": 2.0})


@pytest.mark.parametrize("rank,printed", [(None, True), ("0", True), ("1", False), ("3", False)])
def test_only_rank_zero_prints_the_result(rank, printed, monkeypatch, capsys):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    commands._print_result("sft", RESULT)
    out = capsys.readouterr().out
    assert ("[sft] done -> runs/sft  (train loss 1.2500, 4 steps" in out) is printed
    assert printed or out == ""


def test_other_ranks_log_errors_only_and_print_no_pipeline_progress(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    logger = logging.getLogger("medtune")
    monkeypatch.setattr(logger, "level", logger.level)  # restored after the test
    commands.configure_logging(quiet=False, verbose=False)
    assert logger.getEffectiveLevel() == logging.ERROR
    seen = {}

    def fake_run_pipeline(stages, overwrite, quiet, report):
        report("[1/1] sft: sft (lora) from m")
        seen["called"] = True
        return [RESULT]

    import medtune.config
    import medtune.recipes.pipeline

    monkeypatch.setattr(medtune.config, "load_pipeline_config", lambda path, overrides: [SimpleNamespace(name="sft")])
    monkeypatch.setattr(medtune.recipes.pipeline, "run_pipeline", fake_run_pipeline)
    args = SimpleNamespace(config="p.yaml", overrides=[], quiet=False, overwrite=False)
    assert commands.cmd_pipeline(args) == 0 and seen["called"]
    assert capsys.readouterr().out == ""
