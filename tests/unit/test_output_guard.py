"""`medtune train` / `pipeline` never write over their own inputs: an output equal to, inside or
containing the model, a data file, the reward model or the DeepSpeed config is refused before
anything is written, --overwrite included (issue #14: train with output = model.path deleted the
base weights)."""

from __future__ import annotations

import json

import pytest

from medtune.config import pipeline_from_dict, stage_from_dict
from medtune.errors import MedtuneError
from medtune.recipes.pipeline import validate_pipeline
from medtune.recipes.run import run_stage, stage_inputs


def files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    return model, data


def stage(model, data, output, **extra):
    raw = {"stage": "sft", "model": {"path": str(model)}, "data": {"train": [str(data)]},
           "output": str(output), **extra}
    return stage_from_dict(raw, "run.yaml")


@pytest.mark.parametrize("where,pattern", [
    (lambda m, d: m, r"output '.*model' is the input model.path"),
    (lambda m, d: m / "sft", r"output '.*sft' lies inside the input model.path"),
    (lambda m, d: m.parent, r"output '.*' contains the input model.path"),
    (lambda m, d: d, r"output '.*train.jsonl' is the input data.train"),
    (lambda m, d: d.parent, r"output '.*data' contains the input data.train"),
])
def test_train_output_overlapping_an_input_is_refused_even_with_overwrite(tmp_path, where, pattern):
    model, data = files(tmp_path)
    cfg = stage(model, data, where(model, data))
    with pytest.raises(MedtuneError, match=pattern):
        run_stage(cfg, overwrite=True, quiet=True)
    assert (model / "model.safetensors").read_bytes() == b"weights" and data.is_file()


def test_train_output_that_is_the_deepspeed_config_or_reward_model_is_refused(tmp_path):
    model, data = files(tmp_path)
    ds = tmp_path / "ds.json"
    ds.write_text("{}", encoding="utf-8")
    with pytest.raises(MedtuneError, match="is the input train.deepspeed"):
        run_stage(stage(model, data, ds, train={"deepspeed": str(ds)}), overwrite=True)
    rm = tmp_path / "rm"
    rm.mkdir()
    cfg = stage(model, data, rm, stage="grpo", reward_model=str(rm), train={"batch_size": 4})
    with pytest.raises(MedtuneError, match="is the input reward_model"):
        run_stage(cfg, overwrite=True)
    assert ds.read_text(encoding="utf-8") == "{}"


def test_train_output_on_the_base_of_an_adapter_model_path_is_refused(tmp_path):
    model, data = files(tmp_path)
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}), encoding="utf-8")
    with pytest.raises(MedtuneError, match="is the input the base of model.path"):
        run_stage(stage(adapter, data, model), overwrite=True)


def test_a_hub_id_is_not_a_local_input(tmp_path):
    _, data = files(tmp_path)
    assert stage_inputs(stage("Qwen/Qwen2.5-0.5B", data, tmp_path / "out"))["model.path"] is None


def pipeline(model, data, root, *stages):
    return pipeline_from_dict({"base": {"path": str(model)}, "output": str(root),
                               "stages": [{"stage": "sft", "data": {"train": [str(data)]}, **s} for s in stages]},
                              "pipe.yaml")


def test_pipeline_stage_output_on_the_base_model_is_refused_before_anything_runs(tmp_path):
    model, data = files(tmp_path)
    with pytest.raises(MedtuneError, match=r"stage b: output '.*model' is the input model.path"):
        validate_pipeline(pipeline(model, data, tmp_path / "p", {"name": "a"}, {"name": "b", "output": str(model)}))
    with pytest.raises(MedtuneError, match=r"stage a: output '.*' contains the input data.train"):
        validate_pipeline(pipeline(model, data, tmp_path / "p", {"name": "a", "output": str(data.parent)}))


def test_pipeline_stage_outputs_may_not_overlap(tmp_path):
    model, data = files(tmp_path)
    same = str(tmp_path / "same")
    with pytest.raises(MedtuneError, match=r"stage a output '.*same' and stage c output '.*same' overlap"):
        validate_pipeline(pipeline(model, data, tmp_path / "p", {"name": "a", "output": same}, {"name": "b"},
                                   {"name": "c", "from": "a", "output": same}))
    with pytest.raises(MedtuneError, match=r"stage a output .* and stage b output .* overlap"):
        validate_pipeline(pipeline(model, data, tmp_path / "p", {"name": "a", "output": str(tmp_path / "p")},
                                   {"name": "b"}))


def test_an_earlier_stages_output_read_by_a_later_stage_is_no_input_of_the_pipeline(tmp_path):
    model, data = files(tmp_path)
    stages = pipeline(model, data, tmp_path / "p", {"name": "a"}, {"name": "b"})
    (tmp_path / "p" / "a").mkdir(parents=True)  # a re-run: stage a's output exists and stage b reads it
    from medtune.recipes.pipeline import guard_pipeline_outputs

    guard_pipeline_outputs(stages)
