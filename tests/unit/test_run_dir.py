"""The states of a stage's output dir (recipes/run_dir.py:output_state) at each point a run can be
killed; the model-training side is tests/integration/test_resume_windows.py."""

from __future__ import annotations

import pytest

from medtune.config import save_config, stage_from_dict
from medtune.errors import MedtuneError
from medtune.recipes.run_dir import (
    PENDING,
    RUN_STATE,
    check_data_unchanged,
    claim_output,
    output_state,
)


class Data:
    def __init__(self, path, sha256):
        self.path, self.sha256 = str(path), sha256


def cfg_for(tmp_path, **train):
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    return stage_from_dict({"stage": "sft", "model": {"path": "m"}, "data": {"train": [str(data)]},
                            "train": train, "output": str(tmp_path / "out")}, "run.yaml")


def test_a_pending_lineage_is_finished_not_retrained(tmp_path):
    cfg = cfg_for(tmp_path)
    out = tmp_path / "out"
    claim_output(cfg, out, replace=False)
    (out / PENDING).write_text("{}", encoding="utf-8")
    assert output_state(cfg, out, overwrite=False) == "finish"
    with pytest.raises(MedtuneError, match="already holds a different run"):
        output_state(cfg_for(tmp_path, seed=7), out, overwrite=False)


def test_leftovers_of_this_config_without_a_checkpoint_are_restarted(tmp_path):
    cfg = cfg_for(tmp_path, save_steps=-1)
    out = tmp_path / "out"
    claim_output(cfg, out, replace=False)
    (out / "model.safetensors").write_bytes(b"half")  # killed while saving, no checkpoint to resume
    assert output_state(cfg, out, overwrite=False) == "replace"
    (out / RUN_STATE).unlink()  # not claimed by medtune: someone's files
    with pytest.raises(MedtuneError, match="holds other files"):
        output_state(cfg, out, overwrite=False)
    other = tmp_path / "other"
    other.mkdir()
    save_config(cfg_for(tmp_path, seed=7), other / "config.yaml")
    (other / RUN_STATE).write_text("{}", encoding="utf-8")
    (other / "model.safetensors").write_bytes(b"x")
    with pytest.raises(MedtuneError, match="holds other files"):
        output_state(cfg, other, overwrite=False)


def test_the_data_hashes_recorded_at_claim_are_checked(tmp_path):
    from medtune.data.readers.files import file_sha256

    cfg = cfg_for(tmp_path)
    out, data = tmp_path / "out", tmp_path / "train.jsonl"
    claim_output(cfg, out, replace=False, files=[Data(data, file_sha256(data))])
    check_data_unchanged(out)
    data.write_text('{"instruction": "q2", "output": "a"}\n', encoding="utf-8")
    with pytest.raises(MedtuneError, match=r"train.jsonl: changed since the interrupted run"):
        check_data_unchanged(out)
    (out / RUN_STATE).unlink()  # a run claimed before hashes were recorded: not checked
    check_data_unchanged(out)
