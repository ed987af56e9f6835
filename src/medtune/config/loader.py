"""YAML loading and ``a.b=value`` overrides for stage and pipeline configs.

Example::

    medtune train sft.yaml train.epochs=1 data.max_length=256
    medtune pipeline pipe.yaml stages.sft.train.epochs=1
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from medtune.config.schema import ModelConfig, StageConfig, VocabStep, build, check_stage
from medtune.errors import MedtuneError, did_you_mean


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
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (value parsed as YAML).

    In a list of stages an item is addressed by position or ``name``; ``*`` addresses every stage
    (``stages.*.train.max_steps=2``).
    """
    data = copy.deepcopy(data)
    for item in overrides or []:
        dotted, value = parse_override(item)
        _set(data, dotted.split("."), value, dotted)
    return data


def parse_override(item: str) -> tuple[str, object]:
    """Return ``(dotted key, value parsed as YAML)`` of one ``a.b=value``; a one-line error naming
    the override when it has no key, an empty key part or a value YAML cannot read."""
    if "=" not in item:
        raise MedtuneError(f"override '{item}': expected key=value, e.g. train.epochs=1")
    dotted, raw = item.split("=", 1)
    dotted = dotted.strip()
    if not dotted or not all(part.strip() for part in dotted.split(".")):
        raise MedtuneError(f"override '{item}': expected key=value with a key such as train.epochs "
                           "(no empty part before '=' or between dots)")
    if not raw.strip():
        return dotted, ""
    try:
        return dotted, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MedtuneError(f"override '{item}': the value is not valid YAML ({reason})") from None


def _set(node, keys: list[str], value, dotted: str) -> None:
    if len(keys) > 1 and keys[0] == "*" and isinstance(node, list):
        for item in node:
            _set(item, keys[1:], value, dotted)
        return
    if len(keys) == 1:
        if isinstance(node, list):
            _child(node, keys[0], dotted)  # raises: cannot replace a whole stage this way
        node[keys[0]] = value
        return
    child = _child(node, keys[0], dotted)
    if not isinstance(child, (dict, list)):
        raise MedtuneError(f"override {dotted}: '{keys[0]}' is not a section")
    _set(child, keys[1:], value, dotted)


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


PIPELINE_KEYS = ("base", "vocab", "stages", "output")


class Pipeline(list):
    """The stage configs of a pipeline, in order; ``vocab`` is its vocabulary step (or None)."""

    vocab: VocabStep | None = None


def _vocab_step(data: dict, base: ModelConfig, root: Path, src: str) -> VocabStep | None:
    if not data.get("vocab"):
        return None
    step = build(VocabStep, data["vocab"], src, "vocab.")
    if not step.corpus or step.add < 1:
        raise MedtuneError(f"{src}: vocab: needs corpus (files) and add (>= 1)")
    if step.base or step.output:
        raise MedtuneError(f"{src}: vocab: base and output are set by the pipeline (base.path, <output>/vocab)")
    step.base, step.output = base.path, str(root / "vocab")
    return step


def pipeline_from_dict(data: dict, src: str) -> Pipeline:
    """Return the pipeline's stage configs, each model path resolved to the stage it starts from.

    A stage starts from the previous stage's output, or from the stage named by ``from:``;
    ``reward_model:`` may name an earlier ``rm`` stage instead of a dir. With a ``vocab:`` section
    the first stage starts from the base with its vocabulary grown (``<output>/vocab``).
    """
    for key in data:
        if key not in PIPELINE_KEYS:
            raise MedtuneError(f"{src}: unknown key '{key}'" + did_you_mean(key, PIPELINE_KEYS))
    base = build(ModelConfig, data.get("base") or {}, src, "base.")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise MedtuneError(f"{src}: stages: expected a non-empty list of stage configs")
    root = Path(str(data.get("output") or "runs/pipeline"))
    done: dict[str, StageConfig] = {}
    configs = Pipeline()
    configs.vocab = _vocab_step(data, base, root, src)
    previous = configs.vocab.output if configs.vocab else base.path
    for i, raw in enumerate(stages):
        if not isinstance(raw, dict):
            raise MedtuneError(f"{src}: stages[{i}]: expected a mapping")
        raw = copy.deepcopy(raw)
        name = str(raw.get("name") or f"{i}_{raw.get('stage', 'stage')}")
        where = f"{src}: stages[{i}] ({name})"
        if name in done:
            raise MedtuneError(f"{where}: name '{name}' is used by an earlier stage; stage names must be unique")
        start = raw.pop("from", None)
        if start and start not in done:
            raise MedtuneError(f"{where}: from: no earlier stage named '{start}'"
                               + did_you_mean(start, list(done)))
        model = {**base.__dict__, **(raw.get("model") or {})}
        model["path"] = done[start].output if start else previous
        raw.update(name=name, model=model)
        raw.setdefault("output", str(root / name))
        rm = raw.get("reward_model")
        if isinstance(rm, str) and rm in done:
            if done[rm].stage != "rm":
                raise MedtuneError(f"{where}: reward_model: stage '{rm}' is a {done[rm].stage} stage, not rm")
            raw["reward_model"] = done[rm].output
        cfg = stage_from_dict(raw, where)
        parent = done[start] if start else (configs[-1] if configs else None)
        # A first stage may continue the adapter base.path holds (checked when it loads).
        if cfg.adapter.incremental and parent is not None and parent.adapter.method not in ("lora", "dora"):
            raise MedtuneError(f"{where}: adapter.incremental continues the previous stage's LoRA/DoRA adapter, "
                               "but the stage it starts from trains none")
        done[name] = cfg
        previous = cfg.output
        configs.append(cfg)
    return configs


def load_pipeline_config(path, overrides=()) -> Pipeline:
    """Return the validated stages of pipeline YAML ``path`` with overrides applied."""
    data = read_yaml(path)
    if "stage" in data and "stages" not in data:
        raise MedtuneError(f"{path}: this is a stage config (it has 'stage:'); run it with medtune train")
    return pipeline_from_dict(apply_overrides(data, overrides), str(path))
