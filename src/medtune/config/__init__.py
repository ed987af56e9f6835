"""Typed configuration: stage / pipeline schemas, YAML loading, command-line overrides."""

from medtune.config.loader import (
    apply_overrides,
    load_pipeline_config,
    load_stage_config,
    pipeline_from_dict,
    save_config,
    stage_from_dict,
)
from medtune.config.schema import StageConfig

__all__ = [
    "StageConfig",
    "apply_overrides",
    "load_pipeline_config",
    "load_stage_config",
    "pipeline_from_dict",
    "save_config",
    "stage_from_dict",
]
