"""Every example config runs through the real CLI for two steps on a tiny model, so none can rot.

An example runs as shipped except for size: the model (the tiny fixture), the output dir, steps,
lengths, batch, prefix length, RL sampling and vocabulary growth are overridden; its template,
adapter method, stages, data files and pipeline wiring are the example's own. Examples sharing an
``output:`` (medicalgpt, medicalgpt_grpo) share a run dir, so the second skips the finished stages,
as it would for a user. Run::

    .venv/bin/python -m pytest -q tests/e2e/test_examples_run.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from medtune.config import load_pipeline_config, load_stage_config
from medtune.config.loader import read_yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
STEPS = 2
SIZE = {"train.max_steps": STEPS, "data.max_length": 256, "train.batch_size": 2, "train.grad_accum": 1,
        "train.gradient_checkpointing": "false", "train.save_steps": -1}
# Examples whose base.path is a LoRA dir to hot-start from -> the example whose LoRA output stands in for it.
HOT_START = {"dreamergpt.yaml": "huatuo_lora.yaml"}


def stage_overrides(stage: dict, prefix: str) -> list[str]:
    """Return the size overrides for one raw stage config; ``prefix`` addresses it in a pipeline."""
    items = dict(SIZE)
    if (stage.get("adapter") or {}).get("method") == "prefix":
        items["adapter.num_virtual_tokens"] = 4
    if stage.get("stage") in ("grpo", "rloo"):
        items.update({"rl.max_new_tokens": 8, "rl.num_generations": 2})
    return [f"{prefix}{key}={value}" for key, value in items.items()]


def example_overrides(raw: dict, model: Path, runs: Path) -> list[str]:
    """Return every override that shrinks example ``raw`` to a tiny run of ``model`` under ``runs``."""
    out = [f"output={runs / raw['output']}"]
    if "stages" not in raw:
        return out + [f"model.path={model}", "model.trust_remote_code=false", *stage_overrides(raw, "")]
    out += [f"base.path={model}", "base.trust_remote_code=false"]
    if raw.get("vocab"):
        out.append("vocab.add=20")
    for i, stage in enumerate(raw["stages"]):
        out += stage_overrides(stage, f"stages.{stage.get('name', i)}.")
    return out


WORKERS = 2  # runs at once: each is mostly single-threaded imports, so one per core halves the wall time


def run_one(path: Path, model: Path, runs: Path, waits=()) -> tuple:
    """Run example ``path`` on ``model`` once ``waits`` (futures) finish; return ``(process, stages)``."""
    for future in waits:
        future.result()
    raw = read_yaml(path)
    overrides = example_overrides(raw, model, runs)
    command = "pipeline" if "stages" in raw else "train"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "medtune", "-q", command, str(path), *overrides],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    stages = load_pipeline_config(path, overrides) if command == "pipeline" else [load_stage_config(path, overrides)]
    return proc, stages


def _hot_start_model(future) -> Path:
    proc, stages = future.result()
    assert proc.returncode == 0, "the hot-start example failed"
    return Path(stages[0].output)


@pytest.fixture(scope="session")
def example_runs(request, tiny_dir, tmp_path_factory):
    """Return ``start(path) -> Future[(process, stages)]``; the selected examples are all started at
    once (``WORKERS`` at a time); a hot start waits for its adapter, a shared output dir for its sharer."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_example_runs"]
    runs = tmp_path_factory.mktemp("examples")
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures: dict[Path, Future] = {}
    by_output: dict[str, Future] = {}

    def submit(path: Path) -> Future:
        if path not in futures:
            raw = read_yaml(path)
            hot = HOT_START.get(path.name)
            waits = [by_output[raw["output"]]] if raw["output"] in by_output else []
            if hot:  # a dependency is always submitted first, so a waiting worker never blocks the queue
                hot_future = submit(ROOT / "examples" / hot)
                futures[path] = pool.submit(lambda: run_one(path, _hot_start_model(hot_future), runs, waits))
            else:
                futures[path] = pool.submit(run_one, path, tiny_dir, runs, waits)
            by_output[raw["output"]] = futures[path]
        return futures[path]

    for path in selected:
        submit(path)
    yield submit
    pool.shutdown(wait=True, cancel_futures=True)


def _adapter_base(path: Path) -> str:
    return json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path, example_runs):
    proc, stages = example_runs(path).result()
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stderr[-3000:]}"
    for cfg in stages:
        out = Path(cfg.output)
        lineage = json.loads((out / "lineage.json").read_text(encoding="utf-8"))
        assert lineage["stage"] == cfg.stage
        assert lineage["metrics"]["global_steps"] == STEPS
        assert Path(lineage["parent_model"]).resolve() == Path(cfg.model.path).resolve()  # from: / chain wiring
        if cfg.adapter.incremental:  # the parent's adapter kept training: same base, not merged into a new one
            assert _adapter_base(out) == _adapter_base(Path(cfg.model.path))
    vocab = getattr(stages, "vocab", None)
    if vocab:
        report = json.loads((Path(vocab.output) / "vocab_report.json").read_text(encoding="utf-8"))
        assert 0 < len(report["added"]) <= vocab.add


def test_dreamergpt_final_adapter_merges(example_runs, tmp_path):
    # The example's header says `medtune export merge` turns its final adapter into full weights.
    proc, stages = example_runs(ROOT / "examples" / "dreamergpt.yaml").result()
    assert proc.returncode == 0
    out = tmp_path / "merged"
    merge = subprocess.run([sys.executable, "-m", "medtune", "-q", "export", "merge", "--adapter", stages[-1].output,
                            "-o", str(out)], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
