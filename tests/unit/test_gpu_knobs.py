"""GPU speed knobs (attention implementation, Liger, torch.compile, padding-free packing): config
validation, one-line refusals where they cannot work, and the flattened batch flash attention needs.

No GPU here: refusals are checked on CPU, and for "cuda" by passing the device string to
check_accel (which only reads it); what would run on the GPU is checked for its inputs.
"""

import sys
import types

import pytest
import torch
import yaml

from medtune.data.tokenize.examples import (
    IGNORE,
    Collator,
    encode_conversations,
    encode_texts,
    pack_sequences,
)
from medtune.errors import MedtuneError
from medtune.models import accel
from medtune.models.accel import accel_kwargs, attention_for, check_accel, flattens_batches
from tests.conftest import CONVERSATIONS, write_jsonl
from tests.helpers.stages import stage_config


def cfg_with(tmp_path, stage="sft", **sections):
    return stage_config("runs/none", tmp_path / "d.jsonl", tmp_path / "out", stage, **sections)


def test_defaults_change_nothing(tmp_path):
    cfg = cfg_with(tmp_path)
    assert (cfg.model.attn_implementation, cfg.train.liger_kernel, cfg.train.torch_compile) == ("auto", False, False)
    assert attention_for("auto", "cpu", packed=True) is None  # transformers' default: sdpa
    check_accel(cfg, "cpu", packed=True)  # CPU packing keeps sdpa's block-diagonal mask
    assert accel_kwargs(cfg, model=None) == {}


def test_unknown_attention_is_refused_with_a_hint(tmp_path):
    with pytest.raises(MedtuneError, match="did you mean 'flash_attention_2'"):
        cfg_with(tmp_path, model={"attn_implementation": "flash_attention2"})


def test_flash_attention_in_float32_is_refused_by_the_config(tmp_path):
    with pytest.raises(MedtuneError, match="bfloat16 / float16 only"):
        cfg_with(tmp_path, model={"attn_implementation": "flash_attention_2", "dtype": "float32"})


@pytest.mark.parametrize("sections,pattern", [
    ({"model": {"attn_implementation": "flash_attention_2"}}, "needs a CUDA GPU and the flash_attn package"),
    ({"model": {"attn_implementation": "flex_attention"}}, "flex_attention is refused on cpu"),
    ({"train": {"liger_kernel": True}}, "Liger's Triton kernels need a CUDA GPU"),
    ({"train": {"torch_compile": True}}, "torch_compile: refused on cpu"),
])
def test_cuda_only_knobs_are_refused_on_cpu(tmp_path, sections, pattern):
    with pytest.raises(MedtuneError, match=pattern) as err:
        check_accel(cfg_with(tmp_path, **sections), "cpu", packed=False)
    assert "\n" not in str(err.value)


def test_missing_packages_are_refused_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "has_package", lambda name: False)
    with pytest.raises(MedtuneError, match="needs the flash_attn package"):
        check_accel(cfg_with(tmp_path, model={"attn_implementation": "flash_attention_2"}), "cuda", packed=False)
    with pytest.raises(MedtuneError, match="needs the liger-kernel package"):
        check_accel(cfg_with(tmp_path, train={"liger_kernel": True}), "cuda", packed=False)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dense_block_mask_for_packed_rows_on_cuda_is_refused(tmp_path, attn):
    cfg = cfg_with(tmp_path, stage="pt", model={"attn_implementation": attn})  # pt packs by default
    with pytest.raises(MedtuneError, match=f"{attn} with packed rows on CUDA builds a dense"):
        check_accel(cfg, "cuda", packed=True)
    check_accel(cfg, "cuda", packed=False)  # unpacked rows: fine


def test_auto_picks_a_padding_free_attention_for_packed_rows_on_cuda(monkeypatch):
    monkeypatch.setattr(accel, "has_package", lambda name: name == "flash_attn")
    assert attention_for("auto", "cuda", packed=True) == "flash_attention_2"
    monkeypatch.setattr(accel, "has_package", lambda name: False)
    assert attention_for("auto", "cuda", packed=True) == "flex_attention"
    assert attention_for("auto", "cuda", packed=False) is None
    assert attention_for("eager", "cuda", packed=True) == "eager"  # an explicit choice is never replaced


def test_flash_attention_passes_with_its_package_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "has_package", lambda name: True)
    cfg = cfg_with(tmp_path, model={"attn_implementation": "flash_attention_2", "dtype": "bfloat16"})
    check_accel(cfg, "cuda", packed=True)


def fake_liger(monkeypatch, supported):
    patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
    patch.MODEL_TYPE_TO_APPLY_LIGER_FN = dict.fromkeys(supported)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", types.ModuleType("liger_kernel.transformers"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", patch)


def test_training_keywords_and_liger_model_types(tmp_path, monkeypatch):
    model = types.SimpleNamespace(config=types.SimpleNamespace(model_type="llama"))
    cfg = cfg_with(tmp_path, train={"liger_kernel": True, "torch_compile": True})
    fake_liger(monkeypatch, ["llama", "qwen2"])
    assert accel_kwargs(cfg, model) == {"use_liger_kernel": True, "torch_compile": True}
    fake_liger(monkeypatch, ["qwen2"])
    with pytest.raises(MedtuneError, match="no kernels for model type 'llama'"):
        accel_kwargs(cfg, model)


def test_load_model_passes_the_attention_implementation(tiny_dir):
    from medtune.models.load import load_model

    model = load_model(str(tiny_dir), "float32", "cpu", attn_implementation="eager")
    assert model.config._attn_implementation == "eager" and not flattens_batches(model)
    model.config._attn_implementation = "flash_attention_2"
    assert flattens_batches(model)


def test_flash_attention_sees_packed_samples_only_in_a_one_row_batch(tiny):
    """Why the flattened batch: transformers' flash path reads sample boundaries from position ids
    only when the batch has one row; padded packed rows would be attended as one sequence each."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    _, tok = tiny
    examples = encode_conversations(tok, CONVERSATIONS * 2, 256)
    padded = Collator(tok.pad_token_id)(pack_sequences(examples, 128))
    flat = Collator(tok.pad_token_id, flatten=True)(pack_sequences(examples, 128))
    assert padded["position_ids"].shape[0] > 1 and not _is_packed_sequence(padded["position_ids"], 2)
    assert _is_packed_sequence(flat["position_ids"], 1)


@pytest.mark.parametrize("source,packed", [("sft", True), ("sft", False), ("pt", False)])
def test_flattened_batch_gives_the_padded_batch_loss(tiny, source, packed):
    model, tok = tiny
    model.eval()
    if source == "pt":  # every label is learned: the first label of each sample must be masked
        examples = encode_texts(tok, [m["content"] for c in CONVERSATIONS for m in c], 128)
    else:
        examples = encode_conversations(tok, CONVERSATIONS * 2, 256)
    rows = pack_sequences(examples, 128) if packed else examples
    flat = Collator(tok.pad_token_id, flatten=True)(rows)
    assert flat["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))  # no padding
    assert flat["cu_seq_lens_q"].tolist()[-1] == flat["input_ids"].shape[1]
    assert len(flat["cu_seq_lens_q"]) == len(examples) + 1  # one segment per sample, packed or not
    starts = flat["cu_seq_lens_q"][:-1]
    assert (flat["labels"][0, starts] == IGNORE).all()  # no sample learns from the one before it
    with torch.no_grad():
        want = model(**Collator(tok.pad_token_id)(rows), use_cache=False).loss.item()
        got = model(**flat, use_cache=False).loss.item()
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.slow  # a subprocess importing torch: ~10 s on 2 cores
def test_cli_refuses_flash_attention_on_cpu_in_one_line(tmp_path, tiny_dir):
    from tests.e2e.test_cli import assert_one_line_error, medtune

    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS])
    cfg = {"stage": "sft", "model": {"path": str(tiny_dir), "device": "cpu"}, "data": {"train": [str(data)]},
           "adapter": {"method": "lora"}, "output": str(tmp_path / "run")}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    proc = medtune("train", tmp_path / "sft.yaml", "model.attn_implementation=flash_attention_2",
                   "model.dtype=bfloat16")
    assert_one_line_error(proc, "flash_attention_2 needs a CUDA GPU")
    assert not (tmp_path / "run").exists()  # refused before the output dir is claimed
