"""Merge a LoRA / DoRA adapter into its base model: a plain HF model dir, template included.

Example::

    medtune export merge --adapter runs/sft-lora -o runs/sft-merged
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('runs/sft-merged')"

The result loads with transformers or vLLM without medtune or peft. Merging into a quantized
(4/8-bit) base is refused: the merged weights would be rounded to the base's grid, or the export
would silently stay unmerged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.files import atomic_dir

MERGE_RECORD = "merge.json"


def merge_to_dir(adapter: str, out: str, base: str | None = None, dtype: str = "auto",
                 overwrite: bool = False) -> Path:
    """Write ``adapter`` merged into ``base`` (default: its recorded base) to ``out``; return ``out``."""
    from medtune.models.load import (
        adapter_base,
        is_adapter_dir,
        load_model,
        load_tokenizer,
        merge_adapter,
    )

    if not is_adapter_dir(adapter):
        raise MedtuneError(f"--adapter '{adapter}' is not an adapter dir (no adapter_config.json)")
    _check_mergeable(adapter)
    base = base or adapter_base(adapter)
    _refuse_quantized_config(base)
    model = load_model(base, dtype, "cpu")
    refuse_quantized(model, base)
    out_dir = _claim(Path(out), overwrite)
    merged = merge_adapter(model, adapter)
    merged.config.use_cache = True
    with atomic_dir(out_dir) as tmp:  # a failed merge leaves a previous output as it was
        merged.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(adapter).save_pretrained(tmp)  # the template the adapter was trained with
        record = {"adapter": str(Path(adapter).resolve()), "base": base, "dtype": str(merged.dtype),
                  "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out_dir


def _check_mergeable(adapter: str) -> None:
    """Refuse adapters that cannot be folded into weights (prefix / prompt tuning) or a quantized base."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    kind = cfg.get("peft_type", "")
    if kind not in ("LORA",):
        raise MedtuneError(f"'{adapter}' is a {kind} adapter; only LoRA/DoRA adapters merge into weights "
                           "(serve prefix adapters with the base model: medtune chat --model DIR)")


def refuse_quantized(model, where: str) -> None:
    """Raise when ``model`` holds quantized weights (merging into them is lossy or impossible)."""
    from medtune.models.load import is_quantized

    if is_quantized(model):
        raise MedtuneError(f"base '{where}' is quantized ({model.config.quantization_config}); merge into the "
                           "unquantized base instead (--base DIR), then quantize the merged model")


def _refuse_quantized_config(base: str) -> None:
    config = Path(base) / "config.json"
    if config.is_file() and "quantization_config" in json.loads(config.read_text(encoding="utf-8")):
        raise MedtuneError(f"base '{base}' is a quantized checkpoint; merge into the unquantized base instead "
                           "(--base DIR), then quantize the merged model")


def _claim(out: Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``out`` without ``overwrite``; nothing is removed until the merge succeeds."""
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"output '{out}' is a file; give a directory for the merged model")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MedtuneError(f"output '{out}' is not empty; choose another dir or pass --overwrite")
    return out
