"""``medtune export``: adapters merged into full weights.

Example::

    medtune export merge --adapter runs/sft-lora -o runs/sft-merged
"""

from __future__ import annotations


def cmd_export_merge(args) -> int:
    from medtune.export.merge import merge_to_dir

    out = merge_to_dir(args.adapter, args.out, base=args.base, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged {args.adapter} -> {out} (plain transformers model, chat template kept)")
    return 0
