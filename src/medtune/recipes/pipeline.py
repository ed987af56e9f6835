"""Multi-stage pipelines: validate every stage first, then run them in order, each from its parent.

Re-running a pipeline skips finished stages (their ``lineage.json`` exists and the config is the
same) and resumes an interrupted one from its last complete checkpoint. Example::

    medtune pipeline examples/medicalgpt.yaml
    medtune pipeline examples/medicalgpt.yaml 'stages.*.train.max_steps=2' base.path=runs/tiny
"""

from __future__ import annotations

import logging
from pathlib import Path

from medtune.config import StageConfig
from medtune.errors import MedtuneError

log = logging.getLogger("medtune")


def validate_pipeline(stages: list[StageConfig]) -> None:
    """Raise a one-line error for the first problem in any stage, before anything trains.

    Checks each stage's data files (format, shape, every record), that a model path which is not
    an earlier stage's output exists, reward model dirs, and that each adapter method fits the
    base architecture (on a weightless meta-device copy of the model).
    """
    from medtune.recipes import RECIPES
    from medtune.recipes.run import read_stage_data

    outputs = {str(Path(c.output)) for c in stages}
    for cfg in stages:
        where = f"stage {cfg.name or cfg.stage}"
        _prefixed(where, read_stage_data, cfg, RECIPES[cfg.stage])
        if str(Path(cfg.model.path)) not in outputs:
            _prefixed(where, _check_model, cfg.model.path)
        if cfg.reward_model and str(Path(cfg.reward_model)) not in outputs:
            from medtune.recipes.rl import check_reward_model

            _prefixed(where, check_reward_model, cfg.reward_model)
    _check_adapters(stages, outputs)


def _prefixed(where: str, check, *args) -> None:
    try:
        check(*args)
    except MedtuneError as exc:
        raise MedtuneError(f"{where}: {exc}") from None


def _check_model(path: str) -> None:
    from medtune.models.load import check_model_path

    check_model_path(path)


def _check_adapters(stages: list[StageConfig], outputs: set[str]) -> None:
    """Check every stage's adapter against the architecture of the pipeline's first model."""
    from medtune.models.adapters import check_adapter_fits

    base = next((c.model for c in stages if str(Path(c.model.path)) not in outputs), None)
    if base is None or not Path(base.path).is_dir():
        return  # a hub id: checked when the stage loads it (no download just to validate)
    skeleton = meta_model(base.path, base.trust_remote_code)
    for cfg in stages:
        if cfg.stage == "rm":
            continue  # a different head; checked when the stage loads it
        _prefixed(f"stage {cfg.name or cfg.stage}", check_adapter_fits, skeleton, cfg.adapter)


def meta_model(path: str, trust_remote_code: bool):
    """Return the causal LM at ``path`` built on the meta device: its structure, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from medtune.models.load import adapter_base, is_adapter_dir

    if is_adapter_dir(path):
        path = adapter_base(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def run_pipeline(stages: list[StageConfig], overwrite: bool = False, quiet: bool = False, report=print):
    """Validate then run ``stages`` in order; return their ``StageResult`` list.

    ``report(line)`` receives one progress line per stage.
    """
    from medtune.recipes.run import run_stage

    validate_pipeline(stages)
    results = []
    for i, cfg in enumerate(stages, 1):
        report(f"[{i}/{len(stages)}] {cfg.name}: {cfg.stage} ({cfg.adapter.method}) from {cfg.model.path}")
        results.append(run_stage(cfg, overwrite=overwrite, quiet=quiet))
    return results
