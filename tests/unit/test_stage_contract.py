"""Adding a stage is one Recipe subclass plus one StageSpec row: config validation, the CLI help
and run_stage accept it; removed and unknown stages keep their messages; a stage without a beta
default is refused instead of training with β = 0."""

from __future__ import annotations

import pytest

from medtune.config import stage_from_dict
from medtune.config.stages import STAGE_TABLE, StageSpec, register_stage
from medtune.errors import MedtuneError
from medtune.recipes.recipe import Recipe
from tests.helpers.stages import stage_config


class ToyRecipe(Recipe):
    """Learns the last user turn only (no chat template), refusing an eval split."""

    def check_config(self, cfg, src):
        if cfg.data.eval_split:
            raise MedtuneError(f"{src}: data.eval_split does not apply to stage toy")

    def make_examples(self, cfg, tokenizer, records, stats):
        rows = []
        for record in records:
            ids = tokenizer(record["messages"][0]["content"])["input_ids"][: cfg.data.max_length]
            rows.append({"input_ids": ids, "labels": list(ids)})
        stats.examples += len(rows)
        stats.rows += len(rows)
        return rows


TOY = StageSpec("toy", f"{__name__}:ToyRecipe", "a toy stage for the contract test", ("messages",))


@pytest.fixture
def toy_stage():
    register_stage(TOY)
    yield TOY
    STAGE_TABLE.pop("toy")


def raw(stage: str, **sections) -> dict:
    return {"stage": stage, "model": {"path": "m"}, "data": {"train": ["d.jsonl"]}, "output": "o", **sections}


def test_a_registered_stage_is_validated_listed_and_run(toy_stage, tiny_dir, tmp_path):
    from medtune.cli.main import build_parser
    from medtune.recipes.run import run_stage
    from tests.conftest import CONVERSATIONS, write_jsonl

    assert stage_from_dict(raw("toy"), "toy.yaml").stage == "toy"
    with pytest.raises(MedtuneError, match="toy.yaml: data.eval_split does not apply to stage toy"):
        stage_from_dict(raw("toy", data={"train": ["d.jsonl"], "eval_split": 0.1}), "toy.yaml")
    with pytest.raises(MedtuneError, match="preference.beta does not apply to stage toy"):
        stage_from_dict(raw("toy", preference={"beta": 0.2}), "toy.yaml")
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert "toy" in train.format_help() and "a toy stage for the contract test" in train.format_help()
    data = write_jsonl(tmp_path / "toy.jsonl", [{"messages": c} for c in CONVERSATIONS])
    cfg = stage_config(tiny_dir, data, tmp_path / "out", "toy", train={"max_steps": 2})
    result = run_stage(cfg, quiet=True)
    assert result.metrics["global_steps"] == 2 and (result.output / "lineage.json").is_file()


def test_removed_and_unknown_stages_keep_their_messages(toy_stage):
    with pytest.raises(MedtuneError, match="x.yaml: stage 'ppo' is not available: TRL removed its PPO"):
        stage_from_dict(raw("ppo"), "x.yaml")
    with pytest.raises(MedtuneError, match=r"stage: 'tyo' is not a stage \(did you mean 'toy'\?\)"):
        stage_from_dict(raw("tyo"), "x.yaml")


def test_a_beta_stage_without_a_default_is_refused_not_zero():
    register_stage(StageSpec("dpo2", "medtune.recipes.dpo:DPORecipe", "dpo without a default",
                             ("preference",), sections=("preference",)))
    try:
        with pytest.raises(MedtuneError, match="x.yaml: stage dpo2 has no default for preference.beta"):
            stage_from_dict(raw("dpo2"), "x.yaml")
        assert stage_from_dict(raw("dpo2", preference={"beta": 0.3}), "x.yaml").preference.beta == 0.3
    finally:
        STAGE_TABLE.pop("dpo2")
