"""Every shipped config validates, so the README's examples cannot rot."""

from pathlib import Path

import pytest

from medtune.config import load_pipeline_config, load_stage_config
from medtune.config.loader import read_yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    if "stages" in read_yaml(path):
        stages = load_pipeline_config(path)
        assert [s.stage for s in stages]
        files = [f for s in stages for f in s.data.train]
    else:
        files = load_stage_config(path).data.train
    for f in files:
        assert (ROOT / f).is_file(), f


def test_demo_pipeline_config_validates():
    from medtune.config import pipeline_from_dict
    from medtune.demo.run import demo_config

    raw = demo_config()
    for stage in raw["stages"]:
        stage.setdefault("data", {})["train"] = ["x.jsonl"]
    stages = pipeline_from_dict({"base": {"path": "m"}, "stages": raw["stages"]}, "demo")
    assert [s.stage for s in stages] == ["pt", "sft"]
