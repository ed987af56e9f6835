"""Quantization: dynamic int8 on CPU stays close to fp32 and generates; bitsandbytes export refuses
to run (and writes nothing) without a CUDA GPU."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medtune.cli.main import main
from medtune.errors import MedtuneError
from medtune.export.quantize import quantize_dynamic_int8, quantize_to_dir
from medtune.models.load import load_model, load_tokenizer
from tests.conftest import CONVERSATIONS


def batch(tok):
    texts = [tok.apply_chat_template(c, tokenize=False) for c in CONVERSATIONS]
    return tok(texts, return_tensors="pt", padding=True)


def dynamic_linears(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]


def test_int8_logits_close_to_fp32_and_generate_works(tiny_dir):
    tok = load_tokenizer(str(tiny_dir))
    enc = batch(tok)
    model = load_model(str(tiny_dir), "float32", "cpu").eval()
    with torch.no_grad():
        ref = model(**enc).logits
        ref_gen = model.generate(enc["input_ids"][:1], max_new_tokens=16, do_sample=False)
    q = quantize_dynamic_int8(model)
    assert len(dynamic_linears(q)) == 2 * 7  # q k v o gate up down in each of the 2 layers
    assert type(q.lm_head) is torch.nn.Linear and q.lm_head.weight is q.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        out = q(**enc).logits
        gen = q.generate(enc["input_ids"][:1], max_new_tokens=16, do_sample=False)
    mask = enc["attention_mask"].bool()
    diff = (out - ref).abs()[mask]
    agree = (out.argmax(-1) == ref.argmax(-1))[mask].float().mean().item()
    # measured on this tiny random model: max 6e-3, mean 1e-3, top-1 agreement 1.0, same 16 greedy tokens
    assert 0 < diff.max().item() < 0.03 and diff.mean().item() < 5e-3
    assert agree >= 0.97
    assert gen.shape == ref_gen.shape and (gen == ref_gen).float().mean().item() >= 0.9


def test_int8_head_is_optional(tiny_dir):
    q = quantize_dynamic_int8(load_model(str(tiny_dir), "float32", "cpu"), quantize_head=True)
    assert "lm_head" in dynamic_linears(q)
    assert type(q.model.embed_tokens) is torch.nn.Embedding  # lookups stay fp32


def test_int8_refuses_models_it_cannot_take(tiny_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # stands for a CUDA model: anything not on the CPU
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_dir))
    with pytest.raises(MedtuneError, match="runs on CPU only; the model is on meta"):
        quantize_dynamic_int8(meta)
    half = load_model(str(tiny_dir), "float32", "cpu").to(torch.bfloat16)
    with pytest.raises(MedtuneError, match="needs an fp32 model"):
        quantize_dynamic_int8(half)


def test_bnb_export_refused_without_cuda(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "q"
    with pytest.raises(MedtuneError, match="4-bit export needs a CUDA GPU and bitsandbytes"):
        quantize_to_dir(str(tiny_dir), str(out), 4)
    assert not out.exists()  # never an fp32 copy under a quantized name
    with pytest.raises(MedtuneError, match="--bits 3 is not supported"):
        quantize_to_dir(str(tiny_dir), str(out), 3)
    with pytest.raises(MedtuneError, match="not found"):
        quantize_to_dir(str(tmp_path / "missing"), str(out), 8)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(MedtuneError, match="is an adapter; merge it first"):
        quantize_to_dir(str(tmp_path / "adapter"), str(out), 8)
    assert main(["export", "quantize", "--model", str(tiny_dir), "--bits", "8", "-o", str(out)]) == 2
    assert "8-bit export needs a CUDA GPU" in capsys.readouterr().err and not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="needs a CUDA GPU and bitsandbytes")
@pytest.mark.parametrize("bits", [8, 4])
def test_bnb_export_reloads_quantized(tiny_dir, tmp_path, bits):
    from transformers import AutoModelForCausalLM

    out = quantize_to_dir(str(tiny_dir), str(tmp_path / "q"), bits)
    model = AutoModelForCausalLM.from_pretrained(out, device_map={"": "cuda"})
    assert model.config.quantization_config.to_dict()[f"load_in_{bits}bit"]
    tok = load_tokenizer(str(out))
    assert tok.chat_template == load_tokenizer(str(tiny_dir)).chat_template
    ids = tok.apply_chat_template(CONVERSATIONS[0][:1], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"].to("cuda")
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
