"""A run killed with SIGKILL mid-training resumes from its last complete checkpoint and ends with
the same weights as an uninterrupted run (CPU, fixed seed) — for `medtune train` and `pipeline`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medtune.config import load_pipeline_config, load_stage_config
from medtune.recipes.pipeline import run_pipeline
from medtune.recipes.run import run_stage
from medtune.recipes.run_dir import COMPLETE
from tests.conftest import CONVERSATIONS, SAMPLE, write_jsonl

pytestmark = pytest.mark.slow
STEPS = 120  # long enough that the kill lands mid-run, short enough for CI


def stage_yaml(tiny_dir, tmp_path, out, name="run.yaml"):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 4)
    cfg = {"stage": "sft", "model": {"path": str(tiny_dir), "device": "cpu"},
           "data": {"train": [str(data)], "max_length": 128},
           "adapter": {"method": "full"},
           "train": {"max_steps": STEPS, "learning_rate": 1e-3, "batch_size": 2, "save_steps": 10,
                     "logging_steps": 5},
           "output": str(out)}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def kill_after_checkpoint(cmd, checkpoints: Path, min_step: int = 20, timeout: float = 300):
    """Start ``cmd``, SIGKILL it once a complete checkpoint >= ``min_step`` exists; return its step."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            done = [int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*") if (p / COMPLETE).is_file()]
            if done and max(done) >= min_step:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return max(done)
            if proc.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        pytest.fail("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()


def medtune(*args):
    return [sys.executable, "-m", "medtune", "-q", *args]


def assert_same_weights(a: Path, b: Path):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def test_train_killed_with_sigkill_resumes_to_the_same_weights(tiny_dir, tmp_path):
    reference = run_stage(load_stage_config(stage_yaml(tiny_dir, tmp_path, tmp_path / "ref", "ref.yaml")), quiet=True)
    cfg_path = stage_yaml(tiny_dir, tmp_path, tmp_path / "killed")
    step = kill_after_checkpoint(medtune("train", str(cfg_path)), tmp_path / "killed" / "checkpoints")
    assert step < STEPS and not (tmp_path / "killed" / "lineage.json").exists()
    rerun = subprocess.run(medtune("train", str(cfg_path)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    import json

    lineage = json.loads((tmp_path / "killed" / "lineage.json").read_text())
    assert lineage["metrics"]["resumed_from"].startswith("checkpoint-")
    assert int(lineage["metrics"]["resumed_from"].split("-")[1]) >= step
    assert_same_weights(reference.output, tmp_path / "killed")


def pipeline_yaml(tiny_dir, tmp_path, root, name):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 4)
    cfg = {"base": {"path": str(tiny_dir), "device": "cpu"}, "output": str(root),
           "stages": [
               {"name": "pt", "stage": "pt", "data": {"train": [str(SAMPLE / "pretrain.txt")], "max_length": 64},
                "adapter": {"method": "full"}, "train": {"max_steps": 4, "batch_size": 4}},
               {"name": "sft", "stage": "sft", "data": {"train": [str(data)], "max_length": 128},
                "adapter": {"method": "full"},
                "train": {"max_steps": STEPS, "learning_rate": 1e-3, "batch_size": 2, "save_steps": 10}},
           ]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_pipeline_killed_with_sigkill_skips_done_stages_and_resumes(tiny_dir, tmp_path):
    ref = run_pipeline(load_pipeline_config(pipeline_yaml(tiny_dir, tmp_path, tmp_path / "ref", "ref.yaml")),
                       quiet=True, report=lambda line: None)
    path = pipeline_yaml(tiny_dir, tmp_path, tmp_path / "killed", "pipe.yaml")
    kill_after_checkpoint(medtune("pipeline", str(path)), tmp_path / "killed" / "sft" / "checkpoints")
    assert (tmp_path / "killed" / "pt" / "lineage.json").is_file()
    pt_mtime = os.stat(tmp_path / "killed" / "pt" / "model.safetensors").st_mtime
    rerun = subprocess.run(medtune("pipeline", str(path)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "[pt]" in rerun.stdout and "already holds this finished run" in rerun.stdout
    assert os.stat(tmp_path / "killed" / "pt" / "model.safetensors").st_mtime == pt_mtime
    assert_same_weights(ref[1].output, tmp_path / "killed" / "sft")
