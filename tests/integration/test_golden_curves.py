"""Each stage's loss curve on the tiny model against values recorded before the architecture
moved (tests/golden/loss_curves.json): a refactor that changes what a stage trains on, or how,
shows up here.

Record anew (only when a change is meant to move the curves, and say why in the commit)::

    MEDTUNE_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/integration/test_golden_curves.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, SAMPLE, write_jsonl
from tests.helpers.stages import logged, stage_config

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "loss_curves.json"
RECORD = os.environ.get("MEDTUNE_RECORD_GOLDEN") == "1"
# fp32 on CPU: other machines reorder float sums (1e-7 relative), and a few optimiser steps
# amplify that by orders of magnitude at most; a behaviour change moves losses by far more.
RTOL, ATOL = 2e-4, 2e-5

CASES = {
    "pt": ("pt", SAMPLE / "pretrain.jsonl", {}),
    "sft_lora": ("sft", SAMPLE / "sharegpt.jsonl", {}),
    "sft_full": ("sft", SAMPLE / "sharegpt.jsonl", {"adapter": {"method": "full"},
                                                   "train": {"learning_rate": 1e-3}}),
    "rm": ("rm", SAMPLE / "preference.jsonl", {}),
    "dpo": ("dpo", SAMPLE / "preference.jsonl", {}),
    "orpo": ("orpo", SAMPLE / "preference.jsonl", {}),
    "simpo": ("simpo", SAMPLE / "preference.jsonl", {}),
    "kto": ("kto", SAMPLE / "recipes" / "kto.jsonl", {}),
    "grpo": ("grpo", None, {"train": {"batch_size": 4, "learning_rate": 1e-2},
                           "rl": {"num_generations": 4, "max_new_tokens": 8,
                                  "reward_functions": ["no_repetition", "reference_overlap"]}}),
}


def _curve(result) -> dict:
    curve = {"loss": logged(result, "loss"), "train_loss": result.metrics["train_loss"]}
    for key in ("grad_norm", "reward", "reward_std", "entropy", "rewards/margins"):
        if logged(result, key):
            curve[key] = logged(result, key)
    return curve


@pytest.mark.parametrize("case", list(CASES))
def test_loss_curve_matches_golden(tiny_dir, tmp_path, case):
    stage, data, sections = CASES[case][0], CASES[case][1], dict(CASES[case][2])
    if data is None:
        data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS])
    train = {"max_steps": 3, **sections.pop("train", {})} if "train" in sections else {"max_steps": 3}
    cfg = stage_config(tiny_dir, data, tmp_path / case, stage, train=train, **sections)
    curve = _curve(run_stage(cfg, quiet=True))
    assert len(curve["loss"]) == 3, curve
    golden = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.is_file() else {}
    if RECORD:
        golden[case] = curve
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return
    assert case in golden, f"no golden curve for {case}: record with MEDTUNE_RECORD_GOLDEN=1"
    assert set(curve) == set(golden[case])
    for key, values in golden[case].items():
        assert curve[key] == pytest.approx(values, rel=RTOL, abs=ATOL), key
