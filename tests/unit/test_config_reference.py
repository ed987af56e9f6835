"""docs/config.md is generated from the schema: it must be current and document every key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medtune.config import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_is_current():
    assert DOC.read_text(encoding="utf-8") == reference.config_reference(), (
        "docs/config.md is stale: run python -m medtune.config.reference > docs/config.md")


def test_every_key_is_listed_with_a_description():
    text = reference.config_reference()
    for prefix, cls in reference.SECTIONS:
        notes = reference.field_comments(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in ("name", "from_") or f.name in (
                    "model", "data", "adapter", "train", "preference", "rl", "judge"):
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            assert f"| `{key}` |" in text
            assert notes.get(f.name), f"{key} has no comment in config/schema.py"


def test_comments_above_and_beside_a_field_are_joined():
    @dataclasses.dataclass
    class Example:
        # first line
        # second line
        a: int = 1  # beside
        b: str = "x"

    assert reference.field_comments(Example) == {"a": "first line second line beside", "b": ""}


def test_train_help_points_to_the_reference_and_examples():
    from medtune.cli.main import build_parser

    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))
    text = train.format_help()
    assert "docs/config.md" in text and "python -m medtune.config.reference" in text
    assert "examples/" in text and all(name in text for name in ("pt ", "sft ", "grpo "))
