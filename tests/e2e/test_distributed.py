"""`medtune train` under torchrun (2 processes, gloo on CPU) equals one process at equal global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import CONVERSATIONS, write_jsonl

pytestmark = pytest.mark.slow


def write_config(tiny_dir, tmp_path, name, batch_size):
    # Conversations of different lengths, so token-weighted loss averaging across ranks matters.
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 4)
    cfg = {"stage": "sft", "model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": [str(data)], "max_length": 128},
           "adapter": {"method": "full"},
           "train": {"max_steps": 6, "learning_rate": 2e-3, "batch_size": batch_size, "grad_accum": 2,
                     "save_steps": -1, "logging_steps": 1},
           "output": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_two_processes_equal_one_at_the_same_global_batch(tiny_dir, tmp_path):
    one = subprocess.run([sys.executable, "-m", "medtune", "-q", "train",
                          str(write_config(tiny_dir, tmp_path, "one", 4))], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "medtune", "-q", "train",
                          str(write_config(tiny_dir, tmp_path, "two", 2))], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("[sft] done") == 1, two.stdout  # rank 0 reports, the other rank is quiet
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    start = load_file(str(tiny_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-5, msg=k)
    metrics = [json.loads((tmp_path / n / "lineage.json").read_text())["metrics"] for n in ("one", "two")]
    assert [m["world_size"] for m in metrics] == [1, 2]
    assert metrics[0]["train_loss"] == pytest.approx(metrics[1]["train_loss"], abs=1e-4)
