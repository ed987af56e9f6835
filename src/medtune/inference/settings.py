"""GenerationSettings: the one definition of generation settings (defaults, bounds, help).

Example::

    from medtune.inference.settings import GenerationSettings, add_generation_args
    settings = GenerationSettings(max_new_tokens=64, temperature=0.7, seed=1)
    add_generation_args(parser, ("max_new_tokens", "temperature"))  # --max-new-tokens, --temperature

``ChatModel`` keeps one as its defaults, every engine generates from one, ``medtune chat``,
``infer`` and ``eval`` build their flags with ``add_generation_args``, the API schema takes its
bounds from ``served_bounds`` and the web page its sliders from ``slider`` (other controls: ``label``). A field's metadata
holds its bounds (checked here, for every caller), ``served`` caps (API and web only), the
web slider and the flag help.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from medtune.errors import MedtuneError


def _setting(default, help=None, *, ge=None, gt=None, le=None, served=None, slider=None, label=None):
    """A field with its bounds, ``served`` extra caps ({"le": x}), web ``slider`` (lo, hi, step, label)
    or, for a web control that is not a slider (a checkbox, a number box), its ``label``."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    return field(default=default, metadata={"help": help, "bounds": bounds, "served": served or {},
                                            "slider": slider, "label": label or (slider and slider[3])})


@dataclass(frozen=True)
class GenerationSettings:
    # Field order is the order infer's OUT.meta.json records them in (a resumed run compares them).
    max_new_tokens: int = _setting(256, ge=1, slider=(1, 4096, 1, "Max new tokens"))
    temperature: float = _setting(0.0, "0 = greedy (default)", ge=0, served={"le": 2},
                                  slider=(0.0, 2.0, 0.05, "Temperature (0 = greedy)"))
    top_p: float = _setting(1.0, gt=0, le=1, slider=(0.05, 1.0, 0.05, "Top-p (sampling only)"))
    repetition_penalty: float = _setting(1.0, gt=0, served={"ge": 0.01, "le": 10},
                                         slider=(1.0, 3.0, 0.05, "Repetition penalty"))
    stop: tuple[str, ...] = _setting(())
    n: int = _setting(1, ge=1, served={"le": 16})
    seed: int | None = _setting(None, "sampling seed (with --temperature > 0)",
                                served={"ge": -(2**63), "le": 2**64 - 1})  # what torch.manual_seed takes
    enable_thinking: bool | None = _setting(
        None, "passed to the chat template as enable_thinking (Qwen3: off puts an empty think block in "
              "the prompt); default: the template's own default", label="Think before answering")
    thinking_budget: int | None = _setting(
        None, "at most N tokens inside an open <think> block, then '\\n</think>\\n\\n' is appended and "
              "the answer generated (hf backend)", ge=0, label="Thinking budget (tokens; empty = no limit)")

    def __post_init__(self):
        for f in fields(self):  # sliders and JSON send whole numbers as ints
            if f.type == "float":
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
        object.__setattr__(self, "stop", tuple(self.stop))
        for name, bounds in BOUNDS.items():
            if not _within(getattr(self, name), bounds):
                raise MedtuneError(f"{name} must be {_describe(bounds)}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise MedtuneError("stop must be non-empty strings")


FIELDS = {f.name: f for f in fields(GenerationSettings)}
BOUNDS = {name: f.metadata["bounds"] for name, f in FIELDS.items() if f.metadata["bounds"]}
_FLAG_TYPES = {"int": int, "float": float, "int | None": int}
_OPERATORS = {"ge": ">=", "gt": ">", "le": "<="}


def _within(value, bounds: dict) -> bool:
    if value is None:  # an optional setting left unset
        return True
    return (value >= bounds.get("ge", value) and value <= bounds.get("le", value)
            and ("gt" not in bounds or value > bounds["gt"]))


def _describe(bounds: dict) -> str:
    if "gt" in bounds and "le" in bounds:
        return f"in ({bounds['gt']}, {bounds['le']}]"
    return " and ".join(f"{_OPERATORS[k]} {v}" for k, v in bounds.items())


def served_bounds(name: str) -> dict:
    """Return the pydantic-style bounds (ge/gt/le) a client of the API or web page may send."""
    return {**FIELDS[name].metadata["bounds"], **FIELDS[name].metadata["served"]}


def slider(name: str) -> tuple:
    """Return ``(lo, hi, step, label)`` of the web page's slider for ``name``."""
    return FIELDS[name].metadata["slider"]


def label(name: str) -> str:
    """Return the web page's label for ``name`` (its slider's, or its checkbox's / number box's)."""
    return FIELDS[name].metadata["label"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_generation_args(parser, names, defaults: dict | None = None, helps: dict | None = None) -> None:
    """Add ``--max-new-tokens``-style flags for the settings ``names``.

    ``defaults`` / ``helps`` override a field's default / help for one command
    (``eval choice`` generates 64 tokens by default; ``infer`` seeds with 42).
    """
    defaults, helps = defaults or {}, helps or {}
    for name in names:
        f = FIELDS[name]
        if f.type == "bool | None":
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=defaults.get(name, f.default),
                                help=helps.get(name, f.metadata["help"]))
            continue
        parser.add_argument(flag(name), type=_FLAG_TYPES[f.type], default=defaults.get(name, f.default),
                            help=helps.get(name, f.metadata["help"]))
