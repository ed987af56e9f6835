"""Config validation: types, choices, unknown keys with hints, overrides, pipelines."""

import pytest

from medtune.config import apply_overrides, load_stage_config, pipeline_from_dict, stage_from_dict
from medtune.errors import MedtuneError

BASE = {"stage": "sft", "model": {"path": "m"}, "data": {"train": ["a.jsonl"]}, "output": "out"}


def make(**changes):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data.setdefault(section, {})[key] = value
        else:
            data[section] = value
    return stage_from_dict(data, "run.yaml")


def test_defaults_and_coercion():
    cfg = make(train__learning_rate="2e-4", train__epochs="1", data__train="one.jsonl")
    assert cfg.train.learning_rate == pytest.approx(2e-4)
    assert cfg.train.epochs == 1.0 and isinstance(cfg.train.epochs, float)
    assert cfg.data.train == ["one.jsonl"]
    assert cfg.data.train_on_prompt is False and cfg.model.trust_remote_code is False
    assert cfg.adapter.target == ["all"]


@pytest.mark.parametrize("section,key,hint", [
    ("train", "learnig_rate", "learning_rate"),
    ("data", "max_lenght", "max_length"),
    ("adapter", "rnak", "rank"),
])
def test_misspelled_key_suggests(section, key, hint):
    with pytest.raises(MedtuneError, match=rf"run.yaml: unknown key '{section}.{key}' \(did you mean '{hint}'\?\)"):
        make(**{f"{section}__{key}": 1})


def test_unknown_top_level_key():
    with pytest.raises(MedtuneError, match=r"unknown key 'outptu' \(did you mean 'output'\?\)"):
        stage_from_dict({**BASE, "outptu": "x"}, "run.yaml")


@pytest.mark.parametrize("changes,pattern", [
    ({"train__batch_size": "eight"}, r"train.batch_size: expected int"),
    ({"data__overlength": "drop"}, r"data.overlength: 'drop' is not allowed"),
    ({"model__dtype": "fp32"}, r"model.dtype: 'fp32' is not allowed"),
    ({"data__packing": "maybe"}, r"data.packing: 'maybe' is not allowed"),
    ({"from": "pt"}, r"from: only pipeline stages"),
    ({"stage": "pt", "data__train_on_prompt": True}, r"train_on_prompt does not apply to pt"),
    ({"stage": "stf"}, r"stage: 'stf' is not a stage \(did you mean 'sft'\?\)"),
    ({"stage": "ppo"}, r"TRL removed its PPO trainer in 1.13; use stage: grpo or stage: rloo"),
    ({"adapter__method": "lorra"}, r"'lorra' is not allowed \(did you mean 'lora'\?\)"),
    ({"adapter__method": "full", "adapter__rank": 16}, r"adapter.rank does not apply to method full"),
    ({"adapter__method": "lora", "adapter__num_virtual_tokens": 8},
     r"adapter.num_virtual_tokens does not apply to method lora"),
    ({"adapter__bits": 3}, r"adapter.bits: '3' is not allowed"),
    ({"preference__beta": 0.2}, r"preference.beta does not apply to stage sft"),
    ({"stage": "orpo", "preference__loss": "ipo"}, r"preference.loss selects a DPO loss"),
    ({"stage": "simpo", "preference__reference": "live"}, r"preference.reference applies to dpo and kto"),
    ({"stage": "grpo"}, r"stage grpo needs reward_model: DIR and/or rl.reward_functions"),
    ({"stage": "grpo", "rl__reward_functions": ["length"], "train__batch_size": 6},
     r"multiple of rl.num_generations"),
    ({"reward_model": "runs/rm"}, r"reward_model applies to grpo and rloo"),
    ({"data__curriculum": "length", "data__packing": "true"}, r"cannot be combined with data.packing"),
    ({"stage": "rm", "preference__beta": 0.3}, r"preference.beta does not apply to stage rm"),
    ({"stage": "dpo", "preference__label_smoothing": 0.6}, r"label_smoothing must be in \[0, 0.5\)"),
    ({"adapter__method": "prefix", "train__gradient_checkpointing": True}, r"prefix does not work with train.gradient"),
    ({"stage": "pt", "adapter__method": "prefix"}, r"prefix cannot train packed rows"),
    ({"data__eval_split": 1.5}, r"eval_split must be in \[0, 1\)"),
    ({"train__batch_size": 0}, r"train.batch_size must be >= 1"),
])
def test_bad_values(changes, pattern):
    with pytest.raises(MedtuneError, match=pattern):
        make(**changes)


def test_overrides_parse_yaml_values():
    data = apply_overrides(BASE, ["train.learning_rate=1e-3", "data.packing=true", "output=x/y"])
    cfg = stage_from_dict(data, "run.yaml")
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.data.packing == "true" and cfg.output == "x/y"
    assert BASE["output"] == "out"  # the input is not mutated


@pytest.mark.parametrize("changes,pattern", [
    ({"train__learning_rate": -1e-3}, r"run.yaml: train.learning_rate must be > 0, got -0.001"),
    ({"train__learning_rate": 0}, r"train.learning_rate must be > 0"),
    ({"train__epochs": "nan"}, r"train.epochs: expected a finite number, got 'nan'"),
    ({"train__epochs": float("nan")}, r"train.epochs: expected a finite number"),
    ({"train__learning_rate": "inf"}, r"train.learning_rate: expected a finite number"),
    ({"train__epochs": 0}, r"train.epochs is 0 and train.max_steps is unset: nothing would train"),
    ({"train__epochs": -1}, r"train.epochs must be >= 0"),
    ({"train__max_steps": 0}, r"train.max_steps must be -1 \(train.epochs decides\) or > 0, got 0"),
    ({"train__max_steps": -5}, r"train.max_steps must be >= -1"),
    ({"train__seed": -1}, r"train.seed must be in \[0, 4294967295\], got -1"),
    ({"train__seed": 2**32}, r"train.seed must be in \[0, 4294967295\]"),
    ({"train__warmup_ratio": -0.1}, r"train.warmup_ratio must be >= 0"),
    ({"train__weight_decay": -0.01}, r"train.weight_decay must be >= 0"),
    ({"train__max_grad_norm": -1}, r"train.max_grad_norm must be >= 0"),
    ({"train__save_total_limit": -1}, r"train.save_total_limit must be >= 0"),
    ({"train__neftune_alpha": -5}, r"train.neftune_alpha must be >= 0"),
    ({"adapter__rank": 0}, r"adapter.rank must be >= 1, got 0"),
    ({"adapter__alpha": 0}, r"adapter.alpha must be > 0"),
    ({"adapter__dropout": 1.0}, r"adapter.dropout must be in \[0, 1\)"),
    ({"adapter__target": []}, r"adapter.target is empty"),
    ({"adapter__method": "prefix", "adapter__num_virtual_tokens": 0}, r"adapter.num_virtual_tokens must be >= 1"),
    ({"data__eval_split": -0.1}, r"data.eval_split must be in \[0, 1\)"),
    ({"data__max_length": 4}, r"data.max_length must be >= 8"),
    ({"data__workers": -2}, r"data.workers must be >= 0"),
    ({"stage": "grpo", "rl__temperature": 0}, r"rl.temperature must be > 0"),
    ({"stage": "grpo", "rl__max_new_tokens": 0}, r"rl.max_new_tokens must be >= 1"),
    ({"stage": "grpo", "rl__num_generations": 1}, r"rl.num_generations must be >= 2"),
    ({"stage": "grpo", "rl__beta": -0.1}, r"rl.beta must be >= 0"),
    ({"stage": "grpo", "rl__reward_weights": [1, float("inf")]}, r"rl.reward_weights\[1\]: expected a finite number"),
    ({"stage": "dpo", "preference__beta": -0.1}, r"preference.beta must be >= 0"),
    ({"stage": "simpo", "preference__simpo_gamma": -1}, r"preference.simpo_gamma must be >= 0"),
    ({"stage": "kto", "preference__desirable_weight": 0}, r"preference.desirable_weight must be > 0"),
    ({"stage": "kto", "preference__undesirable_weight": "nan"}, r"undesirable_weight: expected a finite number"),
])
def test_numbers_out_of_range_are_refused_before_anything_loads(changes, pattern):
    with pytest.raises(MedtuneError, match=pattern):
        make(**changes)


def test_epochs_zero_is_allowed_when_max_steps_decides():
    assert make(train__epochs=0, train__max_steps=3).train.max_steps == 3


def test_every_numeric_field_declares_its_range():
    import dataclasses
    import typing

    from medtune.config import schema

    for cls in (schema.DataConfig, schema.AdapterConfig, schema.TrainConfig, schema.PreferenceConfig,
                schema.RLConfig, schema.VocabStep):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float) and "choices" not in f.metadata:
                assert "range" in f.metadata, f"{cls.__name__}.{f.name} has no range"


def test_override_without_equals():
    with pytest.raises(MedtuneError, match="expected key=value"):
        apply_overrides(BASE, ["train.epochs"])


@pytest.mark.parametrize("item,pattern", [
    ("=1", r"override '=1': expected key=value with a key"),
    ("train..epochs=1", r"override 'train..epochs=1': expected key=value with a key"),
    ("train.=1", r"override 'train.=1'"),
    ("train.epochs=[1", r"override 'train.epochs=\[1': the value is not valid YAML"),
    ("data.train={a: [}", r"override 'data.train=\{a: \[\}': the value is not valid YAML"),
])
def test_unparsable_override_is_one_line_naming_it(item, pattern):
    with pytest.raises(MedtuneError, match=pattern) as info:
        apply_overrides(BASE, [item])
    assert "\n" not in str(info.value)


def test_empty_override_value_of_a_number_names_the_key():
    with pytest.raises(MedtuneError, match=r"train.epochs: expected float, got ''"):
        stage_from_dict(apply_overrides(BASE, ["train.epochs="]), "run.yaml")


def test_load_yaml_file_errors(tmp_path):
    with pytest.raises(MedtuneError, match="no such config file"):
        load_stage_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\nmodel: [unclosed\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match=r"bad.yaml:\d+: invalid YAML"):
        load_stage_config(bad)


def test_pipeline_chains_stage_outputs():
    stages = pipeline_from_dict({
        "base": {"path": "base-model", "template": "chatml"},
        "output": "runs/p",
        "stages": [
            {"name": "pt", "stage": "pt", "data": {"train": ["c.txt"]}},
            {"name": "sft", "stage": "sft", "data": {"train": ["s.jsonl"]}},
            {"name": "sft2", "stage": "sft", "from": "pt", "data": {"train": ["s.jsonl"]}},
        ],
    }, "pipe.yaml")
    assert [s.model.path for s in stages] == ["base-model", "runs/p/pt", "runs/p/pt"]
    assert stages[1].output == "runs/p/sft" and stages[1].model.template == "chatml"


def test_pipeline_bad_from_and_override_by_name():
    raw = {"base": {"path": "b"}, "stages": [{"name": "a", "stage": "sft", "from": "zzz",
                                              "data": {"train": ["s.jsonl"]}}]}
    with pytest.raises(MedtuneError, match="no earlier stage named 'zzz'"):
        pipeline_from_dict(raw, "pipe.yaml")
    raw["stages"][0].pop("from")
    stages = pipeline_from_dict(apply_overrides(raw, ["stages.a.train.epochs=1"]), "pipe.yaml")
    assert stages[0].train.epochs == 1.0


def test_stage_and_pipeline_files_are_not_confused(tmp_path):
    from medtune.config import load_pipeline_config

    stage = tmp_path / "stage.yaml"
    stage.write_text("stage: sft\n", encoding="utf-8")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text("stages: []\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match="run it with medtune train"):
        load_pipeline_config(stage)
    with pytest.raises(MedtuneError, match="run it with medtune pipeline"):
        load_stage_config(pipe)
