"""Shared fixtures: tiny models built locally while the tests run (no downloads)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MEDTUNE_CACHE", tempfile.mkdtemp(prefix="medtune-test-cache-"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "medtune" / "assets" / "sample"

CONVERSATIONS = [
    [{"role": "user", "content": "高血压有哪些典型症状？"},
     {"role": "assistant", "content": "高血压的典型症状是头痛头晕。"}],
    [{"role": "system", "content": "你是医生。"},
     {"role": "user", "content": "糖尿病吃什么药？"},
     {"role": "assistant", "content": "糖尿病的一线用药是二甲双胍。"},
     {"role": "user", "content": "需要避免什么？"},
     {"role": "assistant", "content": "应避免高糖饮食。"}],
    [{"role": "user", "content": "What should I do about a mild fever?"},
     {"role": "assistant", "content": "Rest, drink fluids, and see a doctor if it lasts."}],
    [{"role": "user", "content": "感冒挂什么科？"},
     {"role": "assistant", "content": "感冒应到呼吸内科就诊。"}],
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random llama (hidden 32, 2 layers) with a chatml tokenizer trained on bundled text."""
    from medtune.models.tiny import TinySpec, build_tiny

    out = tmp_path_factory.mktemp("tiny") / "llama"
    return build_tiny(out, TinySpec(hidden=32, layers=2, heads=4, kv_heads=2, vocab_size=600))


@pytest.fixture(scope="session")
def varied_dir(tmp_path_factory, tiny_dir) -> Path:
    """``tiny_dir`` with weights redrawn at std 0.3: greedy replies differ from prompt to prompt
    (the small default init answers every prompt alike), for tests that must tell outputs apart."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("varied") / "llama"
    shutil.copytree(tiny_dir, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``(model, tokenizer)`` loaded from ``tiny_dir`` in fp32 on CPU."""
    from medtune.models.load import load_model, load_tokenizer

    return load_model(str(tiny_dir), "float32", "cpu"), load_tokenizer(str(tiny_dir))


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
