"""The config reference (docs/config.md), generated from the schema dataclasses and their comments.

Regenerate after changing a config field::

    python -m medtune.config.reference > docs/config.md

``tests/unit/test_config_reference.py`` fails while docs/config.md differs from what this writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
import typing

from medtune.config import schema, stages

SECTIONS = [("", schema.StageConfig), ("model", schema.ModelConfig), ("data", schema.DataConfig),
            ("adapter", schema.AdapterConfig), ("train", schema.TrainConfig),
            ("preference", schema.PreferenceConfig), ("rl", schema.RLConfig),
            ("rl.judge", schema.JudgeRewardConfig)]
_FIELD = re.compile(r"^\s{4}(\w+):\s*[^=]+?(?:=.*?)?(?:\s+#\s*(.*))?$")


def field_comments(cls) -> dict[str, str]:
    """Map each field of dataclass ``cls`` to its comment: the ``#`` lines just above it and the
    comment at the end of its line, joined."""
    comments, above = {}, []
    for line in textwrap.dedent(inspect.getsource(cls)).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").rstrip())
            continue
        match = _FIELD.match(line) if not stripped.startswith(('"""', "def ", "@")) else None
        if match:
            comments[match.group(1)] = " ".join([*above, match.group(2) or ""]).strip()
        above = []
    return comments


def type_name(tp) -> str:
    """``list[str]`` / ``int`` …, as a user writes it in YAML terms."""
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return {str: "string", int: "int", float: "float", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "" or value == []:
        return '""' if value == "" else "[]"
    return str(value)


def applies_to(section: str, name: str) -> str:
    """The stages that read ``section.name``, from the stage table (a preference option: the
    stages whose recipe reads it; a refused data option: the stages that do not refuse it); for
    an adapter option, the methods that read it."""
    if section == "adapter" and name != "method":
        return "methods: " + ", ".join(m for m, opts in schema.METHOD_OPTIONS.items() if name in opts)
    table = stages.STAGE_TABLE
    section = section.split(".")[0]  # rl.judge: read by the stages that read rl
    if section in ("preference", "rl") or (section, name) == ("", "reward_model"):
        readers = stages.stages_reading(section or name)
        if section == "preference":
            readers = tuple(s for s in readers if name in getattr(stages.stage_recipe(s), "options", (name,)))
    elif section == "data" and name in ("mixture", "weights", "final_weights", "mixture_phases"):
        readers = stages.stages_mixing()
    elif section == "data" and name in ("train_on_prompt", "packing"):
        readers = tuple(s for s, spec in table.items() if name not in spec.refuses)
    else:
        readers = tuple(table)
    return "all" if readers == tuple(table) else ", ".join(readers)


def section_table(prefix: str, cls) -> list[str]:
    hints, notes = typing.get_type_hints(cls), field_comments(cls)
    rows = ["| key | type | default | applies to | what it does |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) or f.name in ("name", "from_"):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        kind = type_name(hints[f.name])
        if f.metadata.get("choices"):
            kind = " \\| ".join(str(c) for c in f.metadata["choices"])
        if f.metadata.get("range"):
            kind += f" ({f.metadata['range'].text()})"
        note = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | `{default_text(f)}` | {applies_to(prefix, f.name)} | {note} |")
    return rows


def config_reference() -> str:
    """The whole reference as markdown."""
    lines = ["# Config reference", "",
             "Generated from `src/medtune/config/schema.py` by `python -m medtune.config.reference`; "
             "do not edit by hand. A stage config is one YAML mapping; a pipeline is `base:` (a model "
             "block) plus `stages:` (a list of stage configs, each with a `name:` and optionally "
             "`from: <name>`). Unknown keys are errors with a suggestion; `key.sub=value` on the "
             "command line overrides the YAML. Runnable examples: `examples/`.", "",
             "Stages (`stage:`):", "",
             *[f"- `{name}`: {spec.summary}" for name, spec in stages.STAGE_TABLE.items()], ""]
    for prefix, cls in SECTIONS:
        lines += [f"## `{prefix}`" if prefix else "## top level", ""]
        doc = inspect.getdoc(cls) or ""
        if doc and not doc.startswith(cls.__name__ + "("):
            lines += [doc, ""]
        lines += section_table(prefix, cls) + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
