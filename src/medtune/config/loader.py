"""YAML loading and ``a.b=value`` overrides for stage and pipeline configs.

Example::

    medtune train sft.yaml train.epochs=1 data.max_length=256
    medtune pipeline pipe.yaml stages.sft.train.epochs=1
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from medtune.config.schema import ModelConfig, StageConfig, build, check_stage
from medtune.errors import MedtuneError


def read_yaml(path) -> dict:
    """Return the mapping in YAML file ``path``; one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise MedtuneError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MedtuneError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise MedtuneError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _child(node, key: str, dotted: str):
    """Return the container under ``key``; a list of stages is indexed by position or ``name``."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            if str(i) == key or (isinstance(item, dict) and item.get("name") == key):
                return item
        raise MedtuneError(f"override {dotted}: no list item named '{key}'")
    return node.setdefault(key, {})


def apply_overrides(data: dict, overrides) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise MedtuneError(f"override '{item}': expected key=value, e.g. train.epochs=1")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = _child(node, key, dotted)
            if not isinstance(node, (dict, list)):
                raise MedtuneError(f"override {dotted}: '{key}' is not a section")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(node, list):
            _child(node, keys[-1], dotted)  # raises: cannot replace a whole stage this way
        node[keys[-1]] = value
    return data


def stage_from_dict(data: dict, src: str) -> StageConfig:
    """Return a validated StageConfig from raw config data."""
    return check_stage(build(StageConfig, data, src), src)


def load_stage_config(path, overrides=()) -> StageConfig:
    """Return the validated stage config in YAML ``path`` with command-line overrides applied."""
    data = read_yaml(path)
    if "stages" in data and "stage" not in data:
        raise MedtuneError(f"{path}: this is a pipeline config (it has 'stages:'); run it with medtune pipeline")
    return stage_from_dict(apply_overrides(data, overrides), str(path))


def save_config(cfg: StageConfig, path) -> None:
    """Write the fully resolved config to ``path`` as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8")


PIPELINE_KEYS = ("base", "stages", "output")


def pipeline_from_dict(data: dict, src: str) -> list[StageConfig]:
    """Return the pipeline's stage configs, each model path resolved to the stage it starts from."""
    for key in data:
        if key not in PIPELINE_KEYS:
            from medtune.errors import did_you_mean

            raise MedtuneError(f"{src}: unknown key '{key}'" + did_you_mean(key, PIPELINE_KEYS))
    base = build(ModelConfig, data.get("base") or {}, src, "base.")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise MedtuneError(f"{src}: stages: expected a non-empty list of stage configs")
    root = Path(str(data.get("output") or "runs/pipeline"))
    outputs: dict[str, str] = {}
    configs, previous = [], base.path
    for i, raw in enumerate(stages):
        raw = copy.deepcopy(raw) if isinstance(raw, dict) else raw
        if not isinstance(raw, dict):
            raise MedtuneError(f"{src}: stages[{i}]: expected a mapping")
        name = str(raw.get("name") or f"{i}_{raw.get('stage', 'stage')}")
        start = raw.get("from")
        if start and start not in outputs:
            raise MedtuneError(f"{src}: stages[{i}].from: no earlier stage named '{start}'")
        model = {**{k: v for k, v in base.__dict__.items()}, **(raw.get("model") or {})}
        model["path"] = outputs[start] if start else previous
        raw.update(name=name, model=model)
        raw.pop("from", None)  # resolved into model.path above
        raw.setdefault("output", str(root / name))
        cfg = stage_from_dict(raw, f"{src}: stages[{i}] ({name})")
        outputs[name] = previous = cfg.output
        configs.append(cfg)
    return configs


def load_pipeline_config(path, overrides=()) -> list[StageConfig]:
    """Return the validated stages of pipeline YAML ``path`` with overrides applied."""
    data = read_yaml(path)
    if "stage" in data and "stages" not in data:
        raise MedtuneError(f"{path}: this is a stage config (it has 'stage:'); run it with medtune train")
    return pipeline_from_dict(apply_overrides(data, overrides), str(path))
