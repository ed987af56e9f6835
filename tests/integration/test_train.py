"""PT and SFT on a tiny model: loss falls, the right weights change, outputs reload exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from medtune.config import stage_from_dict
from medtune.errors import MedtuneError
from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, write_jsonl

pytestmark = pytest.mark.slow


def sft_data(tmp_path):
    rows = [{"messages": c} for c in CONVERSATIONS] * 4
    return write_jsonl(tmp_path / "sft.jsonl", rows)


def config(tiny_dir, data_path, out, **sections):
    raw = {"stage": "sft", "model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": [str(data_path)], "max_length": 256},
           "adapter": {"method": "lora", "rank": 4, "alpha": 8},
           "train": {"epochs": 3, "learning_rate": 5e-3, "batch_size": 4, "logging_steps": 1},
           "output": str(out)}
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    if raw["adapter"]["method"] != "lora":  # rank/alpha belong to lora; other methods refuse them
        raw["adapter"] = {k: v for k, v in raw["adapter"].items() if k not in ("rank", "alpha")}
    return stage_from_dict(raw, "test.yaml")


def weights(path):
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def logits(model, tok):
    ids = tok.apply_chat_template(CONVERSATIONS[1], return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_sft_full_changes_every_weight_and_loss_falls(tiny_dir, tmp_path):
    cfg = config(tiny_dir, sft_data(tmp_path), tmp_path / "out", adapter={"method": "full"},
                 train={"epochs": 6, "learning_rate": 1e-2})
    result = run_stage(cfg, quiet=True)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0] * 0.8
    before, after = weights(tiny_dir / "model.safetensors"), weights(result.output / "model.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before)
    lineage = json.loads((result.output / "lineage.json").read_text())
    assert lineage["data"][0]["records"] == 16 and len(lineage["data"][0]["sha256"]) == 64
    assert lineage["metrics"]["parameters"]["trainable"] == lineage["metrics"]["parameters"]["total"]
    assert (result.output / "config.yaml").is_file() and (result.output / "chat_template.jinja").is_file()
    assert not (result.output / "checkpoints").exists()
    assert (result.output / "generation_config.json").is_file()
    from transformers import (  # plain HF loads it, template included
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    tok = AutoTokenizer.from_pretrained(result.output)
    assert tok.apply_chat_template(CONVERSATIONS[0], tokenize=False).startswith("<|im_start|>user\n")
    assert AutoModelForCausalLM.from_pretrained(result.output).num_parameters() == sum(v.numel() for v in after.values())


class Snapshot(TrainerCallback):
    """Keep copies of every parameter of the model being trained, at start and at end."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_sft_lora_trains_adapters_only_and_reloads_identically(tiny_dir, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medtune.models.load import load_model

    snap = Snapshot()
    result = run_stage(config(tiny_dir, sft_data(tmp_path), tmp_path / "lora"), quiet=True, callbacks=[snap])
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    assert all(not torch.equal(snap.before[n], snap.after[n]) for n in snap.trainable if "lora_B" in n)
    assert all(torch.equal(snap.before[n], snap.after[n]) for n in snap.before if n not in snap.trainable)
    adapter = weights(result.output / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    _, tok = tiny
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), result.output)
    merged = load_model(str(result.output), "float32", "cpu")
    assert torch.allclose(logits(unmerged, tok), logits(merged, tok), atol=1e-5)
    assert not torch.allclose(logits(plain_base, tok), logits(merged, tok), atol=1e-3)


def test_pt_loss_falls_on_text(tiny_dir, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(["高血压的典型症状是头痛头晕。", "糖尿病的一线用药是二甲双胍。"] * 20), encoding="utf-8")
    cfg = config(tiny_dir, text, tmp_path / "pt", stage="pt", adapter={"method": "full"},
                 data={"max_length": 64}, train={"epochs": 8, "batch_size": 2})
    result = run_stage(cfg, quiet=True)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0] * 0.7
    lineage = json.loads((result.output / "lineage.json").read_text())
    assert lineage["tokenization"]["examples"] == 40 and lineage["tokenization"]["rows"] < 40


def test_grad_accumulation_1x8_equals_8x1(tiny_dir, tmp_path):
    data = sft_data(tmp_path)
    common = {"max_steps": 1, "learning_rate": 1e-2, "lr_scheduler": "constant", "group_by_length": False}
    a = run_stage(config(tiny_dir, data, tmp_path / "a", adapter={"method": "full"},
                         train={**common, "batch_size": 8, "grad_accum": 1}), quiet=True)
    b = run_stage(config(tiny_dir, data, tmp_path / "b", adapter={"method": "full"},
                         train={**common, "batch_size": 1, "grad_accum": 8}), quiet=True)
    assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-5)
    # The accumulated gradient itself (Adam's first step is ~lr*sign(g), too coarse to compare).
    norm_a, norm_b = (next(h["grad_norm"] for h in r.log_history if "grad_norm" in h) for r in (a, b))
    assert norm_a == pytest.approx(norm_b, rel=1e-4)


def test_packed_sft_matches_unpacked_first_loss(tiny_dir, tmp_path):
    data = sft_data(tmp_path)
    common = {"max_steps": 1, "batch_size": 16, "group_by_length": False}
    a = run_stage(config(tiny_dir, data, tmp_path / "u", train=common), quiet=True)
    b = run_stage(config(tiny_dir, data, tmp_path / "p", data={"packing": True, "max_length": 512},
                         train=common), quiet=True)
    assert a.metrics["first_logged_loss"] == pytest.approx(b.metrics["first_logged_loss"], rel=1e-4)


def test_output_dir_with_a_different_run_is_refused(tiny_dir, tmp_path):
    data = sft_data(tmp_path)
    first = run_stage(config(tiny_dir, data, tmp_path / "o", train={"max_steps": 1}), quiet=True)
    again = run_stage(config(tiny_dir, data, tmp_path / "o", train={"max_steps": 1}), quiet=True)
    assert again.skipped and not first.skipped
    with pytest.raises(MedtuneError, match="already holds a different run"):
        run_stage(config(tiny_dir, data, tmp_path / "o", train={"max_steps": 2}), quiet=True)


def test_resumed_run_equals_uninterrupted_run(tiny_dir, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash")

    data = sft_data(tmp_path)
    train = {"max_steps": 5, "save_steps": 2, "batch_size": 2, "learning_rate": 1e-2}
    whole = run_stage(config(tiny_dir, data, tmp_path / "whole", adapter={"method": "full"}, train=train),
                      quiet=True)
    cfg = config(tiny_dir, data, tmp_path / "crashed", adapter={"method": "full"}, train=train)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_stage(cfg, quiet=True, callbacks=[Crash()])
    assert not (tmp_path / "crashed" / "lineage.json").exists()
    assert (tmp_path / "crashed" / "checkpoints" / "checkpoint-2").is_dir()
    resumed = run_stage(cfg, quiet=True)
    assert resumed.metrics["resumed_from"] == "checkpoint-2"  # it did not start over
    wa, wb = weights(whole.output / "model.safetensors"), weights(resumed.output / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_tokenization_is_cached_across_runs(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    data = sft_data(tmp_path)
    first = run_stage(config(tiny_dir, data, tmp_path / "one", train={"max_steps": 2}), quiet=True)
    second = run_stage(config(tiny_dir, data, tmp_path / "two", train={"max_steps": 2}), quiet=True)
    lineages = [json.loads((r.output / "lineage.json").read_text())["tokenization"] for r in (first, second)]
    assert [t["from_cache"] for t in lineages] == [False, True]
    assert lineages[0]["label_tokens"] == lineages[1]["label_tokens"]
    assert first.metrics["train_loss"] == pytest.approx(second.metrics["train_loss"], rel=1e-6)
    third = run_stage(config(tiny_dir, data, tmp_path / "three", data={"max_length": 64},
                             train={"max_steps": 2}), quiet=True)  # another setting: tokenized anew
    assert json.loads((third.output / "lineage.json").read_text())["tokenization"]["from_cache"] is False


def test_crash_during_tokenization_keeps_finished_shards(tiny_dir, tmp_path, monkeypatch):
    from medtune.data.tokenize import shards
    from medtune.recipes.sft import SFTRecipe

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shards, "SHARD_RECORDS", 4)  # 16 records, 2 for eval
    rows = [{"messages": c} for c in CONVERSATIONS] * 4
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    real, calls = SFTRecipe.make_examples, []

    def crashing(self, cfg, tok, records, stats):
        calls.append(len(records))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies in the middle of tokenizing
        return real(self, cfg, tok, records, stats)

    cfg = config(tiny_dir, data, tmp_path / "one", data={"eval_split": 0.1, "workers": 1},
                 train={"max_steps": 2})
    monkeypatch.setattr(SFTRecipe, "make_examples", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, quiet=True)
    assert calls == [4, 4, 4]
    calls.clear()
    monkeypatch.setattr(SFTRecipe, "make_examples", lambda *a: calls.append(len(a[3])) or real(*a))
    resumed = run_stage(cfg, quiet=True)
    assert calls == [4, 2, 2]  # only the unfinished train shards (14 = 4+4+4+2), then eval (2)
    assert not list((tmp_path / "cache" / "tokenized").glob("*.parts"))
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache2"))  # an uninterrupted run, no cache
    fresh = run_stage(config(tiny_dir, data, tmp_path / "two", data={"eval_split": 0.1},
                             train={"max_steps": 2}), quiet=True, overwrite=True)
    stats = [json.loads((r.output / "lineage.json").read_text())["tokenization"] for r in (resumed, fresh)]
    assert stats[0]["label_tokens"] == stats[1]["label_tokens"] and stats[0]["examples"] == 14
    assert resumed.metrics["train_loss"] == pytest.approx(fresh.metrics["train_loss"], rel=1e-6)


def test_tokenizing_in_two_processes_equals_one(tiny_dir, tmp_path, monkeypatch):
    from medtune.config.stages import stage_recipe
    from medtune.data.readers.files import read_file
    from medtune.data.tables import source_batches
    from medtune.data.tokenize import shards
    from medtune.data.tokenize.examples import TokenStats
    from medtune.models.load import load_tokenizer
    from medtune.recipes.recipe import StageExamples

    monkeypatch.setattr(shards, "SHARD_RECORDS", 5)
    monkeypatch.setattr(shards, "BATCH_RECORDS", 2)  # 3 batches a shard: two processes split them
    data = sft_data(tmp_path)
    tok = load_tokenizer(str(tiny_dir))
    results = []
    for workers in (1, 2):
        monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / f"cache{workers}"))
        cfg = config(tiny_dir, data, tmp_path / "o", data={"workers": workers})
        stats = TokenStats()
        make = StageExamples(stage_recipe("sft"), cfg, tok)
        assert shards.tokenize_workers(workers, 4) == workers
        parts = tmp_path / f"cache{workers}" / "k.parts"
        files, n_rows = shards.checkpointed_examples(parts, "train", read_file(data).records, make, stats, workers)
        if workers == 2:  # datasets.map wrote one file per process
            assert {f.name for f in files} >= {"train-0_00000_of_00002.arrow", "train-0_00001_of_00002.arrow"}
        rows = [r for f in files for b in source_batches(f) for r in b.to_pylist()]
        assert len(rows) == n_rows
        results.append((rows, stats))
    assert results[0][0] == results[1][0] and len(results[0][0]) == 16
    assert results[0][1] == results[1][1]
