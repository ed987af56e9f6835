"""Command groups (``medtune data …``, ``medtune export …``): one parser with required subcommands."""

from __future__ import annotations


def command_group(sub, name: str, help: str, commands: str):
    """Add ``medtune NAME {commands}`` to ``sub``; return the subparsers its commands go into."""
    p = sub.add_parser(name, help=help)
    return p.add_subparsers(dest=f"{name}_command", required=True, metavar="{" + commands + "}")
