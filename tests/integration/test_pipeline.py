"""Pipelines: whole-pipeline validation before training, hot start, incremental vs merged LoRA,
branching, lineage chains back to the base model and data hashes."""

from __future__ import annotations

import json

import pytest

from medtune.config import pipeline_from_dict
from medtune.errors import MedtuneError
from medtune.recipes.pipeline import run_pipeline
from tests.conftest import CONVERSATIONS, SAMPLE, write_jsonl

pytestmark = pytest.mark.slow


def pipe(tiny_dir, tmp_path, stages, **extra):
    raw = {"base": {"path": str(tiny_dir), "device": "cpu"}, "output": str(tmp_path / "p"), "stages": stages, **extra}
    return pipeline_from_dict(raw, "pipe.yaml")


def sft_stage(name, data, **adapter):
    return {"name": name, "stage": "sft", "data": {"train": [str(data)], "max_length": 128},
            "adapter": {"method": "lora", "rank": 4, "alpha": 8, **adapter},
            "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2}}


def sft_file(tmp_path):
    return write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 2)


def test_a_bad_later_stage_fails_before_anything_trains(tiny_dir, tmp_path):
    bad = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "头痛怎么办", "chosen": "多休息"}])
    stages = pipe(tiny_dir, tmp_path, [sft_stage("sft", sft_file(tmp_path)),
                                       {"name": "dpo", "stage": "dpo", "data": {"train": [str(bad)]},
                                        "adapter": {"method": "lora"}}])
    with pytest.raises(MedtuneError, match=r'stage dpo: .*pref.jsonl:1: field "rejected" missing'):
        run_pipeline(stages, quiet=True, report=lambda line: None)
    assert not (tmp_path / "p").exists()


def test_reward_model_that_is_not_one_is_refused_before_training(tiny_dir, tmp_path):
    stages = pipe(tiny_dir, tmp_path, [
        sft_stage("sft", sft_file(tmp_path)),
        {"name": "grpo", "stage": "grpo", "data": {"train": [str(sft_file(tmp_path))]},
         "reward_model": str(tiny_dir), "train": {"batch_size": 4}}])
    with pytest.raises(MedtuneError, match=r"stage grpo: .*is not a reward model"):
        run_pipeline(stages, quiet=True, report=lambda line: None)
    assert not (tmp_path / "p").exists()


def test_unknown_from_and_bad_adapter_targets_are_refused(tiny_dir, tmp_path):
    with pytest.raises(MedtuneError, match=r"stages\[1\] \(b\): from: no earlier stage named 'sfx' \(did you mean 'sft'\?\)"):
        pipe(tiny_dir, tmp_path, [sft_stage("sft", sft_file(tmp_path)), {**sft_stage("b", sft_file(tmp_path)), "from": "sfx"}])
    stages = pipe(tiny_dir, tmp_path, [sft_stage("sft", sft_file(tmp_path)),
                                       sft_stage("b", sft_file(tmp_path), target=["query_key_value"])])
    with pytest.raises(MedtuneError, match=r"stage b: .*query_key_value"):
        run_pipeline(stages, quiet=True, report=lambda line: None)
    assert not (tmp_path / "p").exists()


def test_incremental_lora_continues_and_lineage_chains_to_the_base(tiny_dir, tmp_path):
    data = sft_file(tmp_path)
    stages = pipe(tiny_dir, tmp_path, [
        {"name": "pt", "stage": "pt", "data": {"train": [str(SAMPLE / "pretrain.txt")], "max_length": 64},
         "adapter": {"method": "full"}, "train": {"max_steps": 2, "batch_size": 4}},
        sft_stage("a", data),
        sft_stage("b", data, incremental=True),
        {**sft_stage("c", data), "from": "a"},  # branch: merge a's adapter, start a new one
    ])
    lines = []
    results = run_pipeline(stages, quiet=True, report=lines.append)
    assert [line.split(":")[0] for line in lines] == ["[1/4] pt", "[2/4] a", "[3/4] b", "[4/4] c"]
    root = tmp_path / "p"
    cfg_b = json.loads((root / "b" / "adapter_config.json").read_text())
    cfg_c = json.loads((root / "c" / "adapter_config.json").read_text())
    assert cfg_b["base_model_name_or_path"] == str(root / "pt")  # continued a's adapter on pt
    assert cfg_c["base_model_name_or_path"] == str(root / "a")  # a merged, new adapter on top
    chain = json.loads((root / "b" / "lineage.json").read_text())["chain"]
    assert [c["stage"] for c in chain] == ["pt", "sft"]
    assert chain[0]["parent_model"] == str(tiny_dir)
    assert chain[0]["data"][0]["sha256"] and chain[1]["output"] == str(root / "a")
    again = run_pipeline(stages, quiet=True, report=lambda line: None)
    assert all(r.skipped for r in again) and len(results) == 4


def test_vocab_step_grows_the_base_then_pt_trains_embeddings_and_head(tiny_dir, tmp_path):
    stages = pipe(tiny_dir, tmp_path, [
        {"name": "pt", "stage": "pt", "data": {"train": [str(SAMPLE / "pretrain.txt")], "max_length": 64},
         "adapter": {"method": "lora", "rank": 4, "alpha": 8, "modules_to_save": ["embed_tokens", "lm_head"]},
         "train": {"max_steps": 2, "batch_size": 4}}],
        vocab={"corpus": [str(SAMPLE / "pretrain.txt")], "add": 30, "min_freq": 2})
    lines = []
    run_pipeline(stages, quiet=True, report=lines.append)
    root = tmp_path / "p"
    report = json.loads((root / "vocab" / "vocab_report.json").read_text())
    assert 0 < len(report["added"]) <= 30 and report["corpus_tokens"]["ratio"] < 1
    assert any(line.startswith("[vocab] added") for line in lines)
    adapter = json.loads((root / "pt" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(root / "vocab")
    assert "embed_tokens" in adapter["modules_to_save"]  # the tiny model ties lm_head to it
    lines.clear()
    run_pipeline(stages, quiet=True, report=lines.append)
    assert lines[0].endswith("already holds this vocabulary; skipped")
