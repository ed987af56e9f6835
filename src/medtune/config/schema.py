"""Typed stage and pipeline configs: the YAML a user writes, validated into dataclasses.

Example::

    from medtune.config import load_stage_config
    cfg = load_stage_config("examples/sft_lora.yaml", ["train.learning_rate=1e-4"])
    cfg.train.learning_rate  # 0.0001

Unknown or misspelled keys are errors with a suggestion; values are coerced to the declared type
(YAML reads ``2e-4`` as a string) and checked against the allowed choices.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from medtune.errors import MedtuneError, did_you_mean

# Stages and adapter methods this version implements; anything else is refused, never ignored.
STAGES = ("pt", "sft")
ADAPTER_METHODS = ("full", "lora")
PLANNED_STAGES = ("rm", "dpo", "kto", "grpo", "ppo")
PLANNED_ADAPTERS = ("freeze", "qlora", "dora", "prefix")


def _choices(*values):
    return {"choices": values}


@dataclass
class ModelConfig:
    path: str = ""  # local dir or hub id
    template: str = "auto"  # auto: the tokenizer's own chat template; or a built-in name
    dtype: str = field(default="auto", metadata=_choices("auto", "float32", "bfloat16", "float16"))
    device: str = "auto"  # auto: cuda if available, else cpu
    trust_remote_code: bool = False  # runs code shipped with the checkpoint: only for sources you trust


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    format: str = "auto"  # alpaca|sharegpt|messages|text|preference; auto-detected per file
    eval_split: float = 0.0  # fraction held out for eval loss (0 = none)
    max_length: int = 1024  # tokens per sample (pt: block size)
    # sft: truncate keeps the start of a long sample; pt: truncate splits a long document into
    # blocks (nothing lost). skip drops it. Both are counted in lineage.json.
    overlength: str = field(default="truncate", metadata=_choices("truncate", "skip"))
    # Several samples per row, isolated by position ids. auto: on for pt, off for sft (on CPU
    # packed rows are slower than length-grouped batches; packing pays with FlashAttention on GPU).
    packing: str = field(default="auto", metadata=_choices("auto", "true", "false"))
    train_on_prompt: bool = False  # false: loss on assistant tokens only


@dataclass
class AdapterConfig:
    method: str = "lora"  # full: all weights (best quality, most memory); lora: low-rank adapters
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target: list[str] = field(default_factory=lambda: ["all"])  # all = every linear layer but lm_head


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2.0e-4
    lr_scheduler: str = field(
        default="cosine", metadata=_choices("linear", "cosine", "constant", "constant_with_warmup")
    )
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    group_by_length: bool = True  # true: batches of similar length, less padding (faster)
    gradient_checkpointing: bool = False  # true: less memory, ~30% slower
    logging_steps: int = 10
    save_steps: int = 0  # 0: checkpoint once per epoch; -1: never (no resume, less disk I/O)
    save_total_limit: int = 2
    seed: int = 42


@dataclass
class StageConfig:
    stage: str = "sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = ""
    name: str = ""  # a pipeline stage's name
    from_: str = ""  # pipeline: start from this stage's output instead of the previous one

    def to_dict(self) -> dict:
        """Return the config as plain YAML-ready data (``from_`` written as ``from``)."""
        data = dataclasses.asdict(self)
        data["from"] = data.pop("from_")
        return data


def _field_name(key: str) -> str:
    return "from_" if key == "from" else key


def _coerce(value, tp, key: str, src: str):
    """Return ``value`` converted to type ``tp`` or raise a MedtuneError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(items)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise MedtuneError(f"{src}: {key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise MedtuneError(f"{src}: {key}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else int(str(value))
        except (TypeError, ValueError):
            raise MedtuneError(f"{src}: {key}: expected {tp.__name__}, got {value!r}") from None
        return number
    if tp is str:
        if isinstance(value, bool):  # YAML true/false for a tri-state such as data.packing
            return "true" if value else "false"
        if isinstance(value, (dict, list)) or value is None:
            raise MedtuneError(f"{src}: {key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp}")


def build(cls, data, src: str, prefix: str = ""):
    """Return a ``cls`` dataclass built from ``data``, rejecting unknown keys with a hint."""
    if not isinstance(data, dict):
        raise MedtuneError(f"{src}: {prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    public = [k if k != "from_" else "from" for k in fields]
    kwargs = {}
    for key, value in data.items():
        name = _field_name(str(key))
        dotted = f"{prefix}{key}"
        if name not in fields:
            raise MedtuneError(f"{src}: unknown key '{dotted}'" + did_you_mean(key, public))
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value or {}, src, f"{dotted}.")
            continue
        kwargs[name] = _coerce(value, tp, dotted, src)
        choices = fields[name].metadata.get("choices")
        if choices and kwargs[name] not in choices:
            raise MedtuneError(f"{src}: {dotted}: '{value}' is not allowed" + did_you_mean(value, choices))
    return cls(**kwargs)


def check_stage(cfg: StageConfig, src: str) -> StageConfig:
    """Return ``cfg`` after the cross-field checks a typed field cannot express."""
    if cfg.stage in PLANNED_STAGES:
        raise MedtuneError(f"{src}: stage '{cfg.stage}' is not implemented in this version (available: {', '.join(STAGES)})")
    if cfg.stage not in STAGES:
        raise MedtuneError(f"{src}: stage: '{cfg.stage}' is not a stage" + did_you_mean(cfg.stage, STAGES))
    method = cfg.adapter.method
    if method in PLANNED_ADAPTERS:
        raise MedtuneError(f"{src}: adapter.method '{method}' is not implemented in this version (available: full, lora)")
    if method not in ADAPTER_METHODS:
        raise MedtuneError(f"{src}: adapter.method: '{method}' is not allowed" + did_you_mean(method, ADAPTER_METHODS))
    if cfg.from_:
        raise MedtuneError(f"{src}: from: only pipeline stages start from another stage")
    if cfg.stage == "pt" and cfg.data.train_on_prompt:
        raise MedtuneError(f"{src}: data.train_on_prompt does not apply to pt (every token is learned)")
    if not cfg.model.path:
        raise MedtuneError(f"{src}: model.path is required")
    if not cfg.data.train:
        raise MedtuneError(f"{src}: data.train needs at least one file")
    if not cfg.output:
        raise MedtuneError(f"{src}: output is required (the run directory)")
    if not 0.0 <= cfg.data.eval_split < 1.0:
        raise MedtuneError(f"{src}: data.eval_split must be in [0, 1), got {cfg.data.eval_split}")
    for key in ("batch_size", "grad_accum", "logging_steps"):
        if getattr(cfg.train, key) < 1:
            raise MedtuneError(f"{src}: train.{key} must be >= 1")
    if cfg.train.save_steps < -1:
        raise MedtuneError(f"{src}: train.save_steps must be -1 (never), 0 (each epoch) or a step count")
    if cfg.data.max_length < 8:
        raise MedtuneError(f"{src}: data.max_length must be >= 8")
    return cfg
