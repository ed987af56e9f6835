"""`medtune plan` through the real command line: the component table and verdict, --json, and
one-line errors (exit 2) for a model without config.json and an unknown --gpu."""

from __future__ import annotations

import json

import yaml

from tests.conftest import SAMPLE
from tests.helpers.cli import assert_one_line_error, medtune

LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
            "tie_word_embeddings": False}


def _config(tmp_path, model_dir, **train) -> str:
    raw = {"stage": "sft", "model": {"path": str(model_dir), "template": "chatml"},
           "data": {"train": [str(SAMPLE / "sharegpt.jsonl")], "max_length": 1024},
           "adapter": {"method": "full"}, "train": {"batch_size": 8, **train}, "output": str(tmp_path / "run")}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def test_plan_prints_the_components_and_a_suggestion_that_fits(tmp_path):
    model = tmp_path / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_8B), encoding="utf-8")  # the shape only, no weights
    proc = medtune("plan", _config(tmp_path, model), "--gpu", "H100")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for component in ("weights", "gradients", "optimizer state", "activations", "logits", "peak"):
        assert f"\n{component} " in out, out
    assert "8,030.3M parameters" in out
    assert "does not fit in 79.6 GB (H100-80GB)" in out and "with full, batch" in out and "gradient checkpointing" in out
    assert "estimated from bytes: no tokenizer" in out and "tokens/s" in out


def test_plan_json_of_a_tiny_model_on_cpu(tmp_path, tiny_dir):
    proc = medtune("plan", _config(tmp_path, tiny_dir), "train.batch_size=2", "--memory", "4",
                   "--tokens-per-second", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["fits"] is True and plan["verdict"].startswith("fits in 4 GB with")
    assert plan["setting"] == "full, batch 2 x accumulation 1"
    assert plan["tokens_counted"] == "tokenized" and plan["tokens_per_epoch"] > 0
    assert plan["epoch_seconds"] == round(plan["tokens_per_epoch"] / 1000, 1)
    assert set(plan["components_gb"]) >= {"weights", "gradients", "optimizer state", "activations", "logits"}


def test_plan_of_a_model_without_config_json_is_one_line(tmp_path):
    empty = tmp_path / "weights-only"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    assert_one_line_error(medtune("plan", _config(tmp_path, empty)), "has no config.json")


def test_plan_with_an_unknown_gpu_is_one_line(tmp_path, tiny_dir):
    assert_one_line_error(medtune("plan", _config(tmp_path, tiny_dir), "--gpu", "H1000"), "unknown GPU 'H1000'")
