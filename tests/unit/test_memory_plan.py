"""The memory planner (medtune.models.memory): parameter counts exactly those of models built from
the same config, each component scaling as it must, and a setting that fits found for one that
does not. Its accuracy against measured peaks is bench/plan_accuracy.py's (BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from medtune.errors import MedtuneError
from medtune.models.memory import (
    GIB,
    ModelShape,
    Setting,
    candidates,
    estimate,
    find_gpu,
    read_shape,
    suggest,
    trainable_parameters,
)

SHAPES = {  # small configs of each family: GQA, explicit head_dim, biases, tied and untied heads
    "llama_gqa_untied": ("llama", {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 3,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
                                   "tie_word_embeddings": False}),
    "llama_head_dim_bias": ("llama", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                      "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
                                      "vocab_size": 257, "attention_bias": True, "mlp_bias": True,
                                      "tie_word_embeddings": True}),
    "qwen2_tied": ("qwen2", {"hidden_size": 96, "intermediate_size": 200, "num_hidden_layers": 2,
                             "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 333,
                             "tie_word_embeddings": True}),
    "qwen2_untied": ("qwen2", {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 280,
                               "tie_word_embeddings": False}),
}


def _build(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, fields = SHAPES[name]
    config = AutoConfig.for_model(arch, **fields)
    torch.manual_seed(0)
    return config, AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", list(SHAPES))
def test_parameter_count_is_exactly_the_built_models(name):
    config, model = _build(name)
    assert ModelShape.from_config(config).parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["llama_gqa_untied", "qwen2_tied"])
def test_lora_trainable_count_is_exactly_peft_s(name):
    from peft import LoraConfig, get_peft_model

    config, model = _build(name)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    shape = ModelShape.from_config(config)
    assert trainable_parameters(shape, Setting(method="lora", rank=4))[0] == sum(
        p.numel() for p in peft_model.parameters() if p.requires_grad)
    only_qv = Setting(method="lora", rank=4, target=("q_proj", "v_proj"))
    config, model = _build(name)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainable_parameters(shape, only_qv)[0] == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_read_shape_reads_a_saved_model_dir(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert read_shape(str(tiny_dir)).parameters() == sum(p.numel() for p in model.parameters())


def test_read_shape_without_config_json_is_one_line(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(MedtuneError, match="has no config.json"):
        read_shape(str(tmp_path))


# Llama-3.1-8B's published shape (bench/gpu_suite.py): the components at a realistic scale.
L8B = ModelShape("llama", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128,
                 vocab=128256, tied=False)
FULL = Setting(method="full", batch=4, length=1024, dtype_bytes=2)


def test_parameters_of_the_published_8b_shape():
    assert L8B.parameters() == 8_030_261_248  # Llama-3.1-8B's model card: 8.03B


def test_activations_and_logits_scale_with_batch_and_length_and_nothing_else_does():
    one, two = estimate(L8B, FULL).components, estimate(L8B, dataclasses.replace(FULL, batch=8)).components
    longer = estimate(L8B, dataclasses.replace(FULL, length=2048)).components
    for key in ("activations", "logits"):
        assert two[key] == pytest.approx(2 * one[key], rel=1e-6)
        assert longer[key] == pytest.approx(2 * one[key], rel=1e-6)
    for key in ("weights", "gradients", "optimizer state"):
        assert two[key] == one[key] == longer[key]


def test_checkpointing_keeps_a_fraction_of_the_activations():
    plain = estimate(L8B, FULL).components["activations"]
    ckpt = estimate(L8B, dataclasses.replace(FULL, checkpointing=True)).components["activations"]
    assert ckpt < plain / 5


def test_lora_gradients_and_optimizer_are_a_sliver_of_full_fine_tuning():
    full = estimate(L8B, FULL)
    lora = estimate(L8B, dataclasses.replace(FULL, method="lora", rank=16))
    assert lora.components["gradients"] < full.components["gradients"] / 50
    assert lora.components["optimizer state"] == 2 * lora.components["gradients"]
    assert full.components["optimizer state"] == 2 * full.components["gradients"]  # pure bf16: no fp32 master copy
    assert lora.components["weights"] == full.components["weights"]
    assert lora.trainable == 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336))


def test_qlora_weights_are_about_a_quarter_of_bf16():
    bf16 = estimate(L8B, dataclasses.replace(FULL, method="lora")).components["weights"]
    nf4 = estimate(L8B, dataclasses.replace(FULL, method="qlora")).components["weights"]
    assert 0.3 < nf4 / bf16 < 0.5  # linears at ~0.52 byte; embeddings and lm_head upcast to fp32


def test_freeze_trains_and_stores_activations_for_the_last_layers_only():
    freeze = estimate(L8B, dataclasses.replace(FULL, method="freeze", trainable_layers=2))
    full = estimate(L8B, FULL)
    assert freeze.trainable == 2 * L8B.layer_parameters()
    assert freeze.components["activations"] < full.components["activations"] / 10


def test_pair_stages_forward_two_rows_per_sample():
    sft = estimate(L8B, FULL).components["activations"]
    assert estimate(L8B, dataclasses.replace(FULL, stage="dpo")).components["activations"] == 2 * sft
    assert estimate(L8B, dataclasses.replace(FULL, stage="rm")).components["logits"] == 0


def test_an_oversized_config_gets_the_first_setting_that_fits():
    h100, big = find_gpu("H100"), dataclasses.replace(FULL, batch=8)
    assert estimate(L8B, big).peak > h100.memory_gib * GIB
    option, fits = suggest(L8B, big, h100.memory_gib * GIB)
    assert fits.peak <= h100.memory_gib * GIB
    assert option.checkpointing and option.method == "full"  # checkpointing is tried first
    assert option.batch * option.accum == big.batch * big.accum
    option, _ = suggest(L8B, big, find_gpu("rtx4090").memory_gib * GIB)
    assert option.method == "lora" and option.batch * option.accum == 8
    assert suggest(L8B, big, 2 * GIB) is None


def test_candidates_keep_the_effective_batch():
    tried = list(candidates(dataclasses.replace(FULL, batch=6, accum=2)))
    assert tried[0] == dataclasses.replace(FULL, batch=6, accum=2)
    assert {s.batch * s.accum for s in tried} == {12}
    assert [s.method for s in tried][-1] == "qlora"


def test_gpu_names():
    assert find_gpu("h200").memory_gib > 130
    assert find_gpu("RTX 4090").name == "RTX4090-24GB"
    with pytest.raises(MedtuneError, match="could be A100-80GB or A100-40GB"):
        find_gpu("a100")
    with pytest.raises(MedtuneError, match="unknown GPU 'tpu'"):
        find_gpu("tpu")


def test_shape_round_trips_through_a_written_config_json(tmp_path):
    arch, fields = SHAPES["qwen2_tied"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": arch, **fields}), encoding="utf-8")
    config, model = _build("qwen2_tied")
    assert read_shape(str(tmp_path)) == ModelShape.from_config(config)
