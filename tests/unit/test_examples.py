"""Every shipped config validates and documents how to run it, so the README's examples cannot rot.

Running them is tests/e2e/test_examples_run.py; this file only reads them (fast, no models).
"""

import json
from pathlib import Path

import pytest

from medtune.config import load_pipeline_config, load_stage_config
from medtune.config.loader import read_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIGS = sorted(EXAMPLES.rglob("*.yaml"))
TOP_LEVEL = sorted(EXAMPLES.glob("*.yaml"))
JSONS = sorted(EXAMPLES.rglob("*.json"))
RECIPE_SAMPLES = ROOT / "src" / "medtune" / "assets" / "sample" / "recipes"


def load(path: Path) -> list:
    """Return the example's validated stage configs (one for a stage config)."""
    if "stages" in read_yaml(path):
        return load_pipeline_config(path)
    return [load_stage_config(path)]


def data_files(path: Path) -> list[str]:
    """Return every data file the example reads (stage data and a pipeline's vocab corpus)."""
    stages = load(path)
    vocab = getattr(stages, "vocab", None)
    return [f for s in stages for f in s.data.train] + (vocab.corpus if vocab else [])


def header(path: Path) -> str:
    """Return the comment lines at the top of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


def test_examples_found():
    names = {p.relative_to(EXAMPLES).as_posix() for p in CONFIGS}
    assert {"chatdoctor.yaml", "huatuo_lora.yaml", "chatglm_ptuning_v2.yaml", "chatglm_med.yaml",
            "medicalgpt.yaml", "medicalgpt_grpo.yaml", "ziya_tcm.yaml", "dreamergpt.yaml",
            "distributed/sft_zero3.yaml", "distributed/sft_fsdp.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_shipped_config_validates(path):
    assert [s.stage for s in load(path)]
    for f in data_files(path):
        assert (ROOT / f).is_file(), f


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_header_shows_the_command(path):
    command = "pipeline" if "stages" in read_yaml(path) else "train"
    assert f"medtune {command} {path.relative_to(ROOT).as_posix()}" in header(path)


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: p.name)
def test_header_shows_a_tiny_model_run(path):
    assert "medtune model tiny" in header(path)


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_deepspeed_json_is_a_zero_config(path):
    config = json.loads(path.read_text(encoding="utf-8"))
    assert config["zero_optimization"]["stage"] in (2, 3)


def test_referenced_deepspeed_configs_exist():
    referenced = [s.train.deepspeed for p in CONFIGS for s in load(p) if s.train.deepspeed]
    assert referenced
    for ref in referenced:
        assert (ROOT / ref) in JSONS, ref


def test_every_recipe_sample_is_used():
    used = {(ROOT / f).resolve() for p in TOP_LEVEL for f in data_files(p)}
    samples = {p.resolve() for p in RECIPE_SAMPLES.iterdir() if p.suffix in (".json", ".jsonl", ".txt")}
    assert samples and samples <= used, sorted(p.name for p in samples - used)


def test_medicalgpt_pipelines_share_their_first_stages():
    # Their headers promise that whichever runs second skips pt/sft/rm: that needs identical stages.
    dpo, grpo = (load(EXAMPLES / name) for name in ("medicalgpt.yaml", "medicalgpt_grpo.yaml"))
    assert [s.to_dict() for s in dpo[:3]] == [s.to_dict() for s in grpo[:3]]
    assert [s.stage for s in dpo] == ["pt", "sft", "rm", "dpo"]
    assert [s.stage for s in grpo] == ["pt", "sft", "rm", "grpo"]
    assert grpo[3].reward_model == grpo[2].output and grpo[3].model.path == grpo[1].output


def test_demo_pipeline_config_validates():
    from medtune.config import pipeline_from_dict
    from medtune.demo.run import demo_config

    raw = demo_config()
    for stage in raw["stages"]:  # the demo names its data files; any paths validate
        stage["data"]["train"] = [f"{name}.jsonl" for name in stage["data"]["train"]]
    stages = pipeline_from_dict({"base": {"path": "m"}, "stages": raw["stages"]}, "demo")
    assert [s.stage for s in stages] == ["sft", "grpo"]
    assert stages[0].data.mixture == "constant" and stages[1].rl.reward_functions == ["answer_match"]
