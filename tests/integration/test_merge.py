"""`medtune export merge`: merged weights give the adapter model's logits; refusals are clear."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from medtune.errors import MedtuneError
from medtune.export.merge import merge_to_dir
from medtune.models.load import load_model
from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS
from tests.integration.test_train import config, sft_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    cfg = config(tiny_dir, sft_data(tmp), tmp / "lora", train={"max_steps": 6, "learning_rate": 3e-2})
    return run_stage(cfg, quiet=True).output


def logits_of(model, tok_dir):
    from medtune.models.load import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    ids = tok.apply_chat_template(CONVERSATIONS[1], return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_logits_equal_unmerged_adapter(tiny_dir, lora_run, tmp_path):
    from peft import PeftModel

    base = load_model(str(tiny_dir), "float32", "cpu")
    unmerged = PeftModel.from_pretrained(base, str(lora_run)).eval()
    out = merge_to_dir(str(lora_run), str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    a, b = logits_of(unmerged, lora_run), logits_of(merged, out)
    assert (a - logits_of(load_model(str(tiny_dir), "float32", "cpu"), tiny_dir)).abs().max() > 1e-3  # adapter matters
    assert (a - b).abs().max().item() < 1e-5
    assert (out / "chat_template.jinja").read_text() == (lora_run / "chat_template.jinja").read_text()
    assert json.loads((out / "merge.json").read_text())["base"] == str(tiny_dir)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()


def test_cli_merge_and_refusals(tiny_dir, lora_run, tmp_path):
    run = subprocess.run([sys.executable, "-m", "medtune", "export", "merge", "--adapter", str(lora_run),
                          "-o", str(tmp_path / "m")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "chat template kept" in run.stdout
    again = subprocess.run([sys.executable, "-m", "medtune", "export", "merge", "--adapter", str(lora_run),
                            "-o", str(tmp_path / "m")], capture_output=True, text=True)
    assert again.returncode == 2 and "is not empty" in again.stderr
    not_adapter = subprocess.run([sys.executable, "-m", "medtune", "export", "merge", "--adapter", str(tiny_dir),
                                  "-o", str(tmp_path / "x")], capture_output=True, text=True)
    assert not_adapter.returncode == 2 and "is not an adapter dir" in not_adapter.stderr


def test_merging_into_a_quantized_base_is_refused(tiny_dir, lora_run, tmp_path):
    quant = tmp_path / "quant"
    shutil.copytree(tiny_dir, quant)
    cfg = json.loads((quant / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quant / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MedtuneError, match="is a quantized checkpoint; merge into the unquantized base"):
        merge_to_dir(str(lora_run), str(tmp_path / "out"), base=str(quant))
    assert not (tmp_path / "out").exists()
