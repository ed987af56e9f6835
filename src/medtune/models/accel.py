"""GPU speed knobs: attention implementation, Liger kernels, torch.compile, padding-free packing.

Each knob is checked before any weights load, so one that cannot work here fails with one line
instead of being ignored. Example::

    from medtune.models.accel import attention_for, check_accel
    check_accel(cfg, "cuda", packed=True)          # MedtuneError on a combination that cannot work
    attention_for("auto", "cuda", packed=True)     # 'flash_attention_2' (flash_attn installed) or 'flex_attention'

Packed rows keep samples apart by ``position_ids`` that restart at 0 (see data.tokenize). What
transformers 5.x does with them depends on the attention implementation:

- sdpa / eager: ``masking_utils`` turns the restarts into a dense block-diagonal mask, batch x
  length x length (isolated, but O(length²) memory and no FlashAttention kernel);
- flex_attention: the same restarts become a sparse BlockMask (isolated, padding blocks skipped);
- flash_attention_2: varlen kernels take the sample boundaries from ``position_ids``, but only for a
  batch of one row (``_is_packed_sequence``); with more rows and no mask every row is attended as
  ONE causal sequence and samples leak into each other. medtune therefore flattens each batch
  into one padding-free row for flash attention (``Collator(flatten=True)``).
"""

from __future__ import annotations

import importlib.util

from medtune.errors import MedtuneError

# Attention implementations that isolate packed samples without a dense block mask.
PADDING_FREE = ("flash_attention_2", "flex_attention")
CPU_HINT = "it needs a CUDA GPU"


def has_package(name: str) -> bool:
    """Return True when the module ``name`` can be imported here."""
    return importlib.util.find_spec(name) is not None


def attention_for(requested: str, device: str, packed: bool) -> str | None:
    """Return the ``attn_implementation`` to load the model with (None: transformers' default,
    sdpa or eager where a model has no sdpa).

    ``auto`` keeps the default except for packed rows on CUDA, where it picks a padding-free
    implementation: flash_attention_2 when flash_attn is installed, else flex_attention.
    """
    if requested != "auto":
        return requested
    if packed and device.startswith("cuda"):
        return "flash_attention_2" if has_package("flash_attn") else "flex_attention"
    return None


def check_accel(cfg, device: str, packed: bool) -> None:
    """Refuse, with one line, a speed knob of ``cfg`` that cannot work on ``device``."""
    _check_attention(cfg, device, packed)
    t, on_cuda = cfg.train, device.startswith("cuda")
    if t.liger_kernel:
        if not on_cuda:
            raise MedtuneError(f"train.liger_kernel: Liger's Triton kernels need a CUDA GPU; this run is on {device} "
                               "(set it false)")
        if not has_package("liger_kernel"):
            raise MedtuneError("train.liger_kernel needs the liger-kernel package: pip install 'medtune[gpu]'")
    if t.torch_compile and not on_cuda:
        raise MedtuneError(f"train.torch_compile: refused on {device}: inductor compiles C++ for every new batch "
                           "shape (~40 s a step for a 2-layer model), which costs more than it saves; it pays on GPU")


def _check_attention(cfg, device: str, packed: bool) -> None:
    import torch

    from medtune.models.load import resolve_dtype

    on_cuda = device.startswith("cuda")
    attn = attention_for(cfg.model.attn_implementation, device, packed)
    key = "model.attn_implementation"
    if attn == "flash_attention_2":
        if not on_cuda:
            raise MedtuneError(f"{key}: flash_attention_2 needs a CUDA GPU and the flash_attn package; this run is "
                               f"on {device} (use sdpa)")
        if not has_package("flash_attn"):
            raise MedtuneError(f"{key}: flash_attention_2 needs the flash_attn package (pip install flash-attn "
                               "--no-build-isolation), or use flex_attention")
        if resolve_dtype(cfg.model.dtype, device) == torch.float32:
            raise MedtuneError(f"{key}: flash_attention_2 runs in bfloat16 / float16 only; set model.dtype "
                               "to bfloat16 (or auto on a bf16 GPU)")
    if attn == "flex_attention" and not on_cuda:
        raise MedtuneError(f"{key}: flex_attention is refused on {device}: it compiles its kernel for every new "
                           "batch shape (~30 s each on CPU); use sdpa, which isolates packed rows on CPU too")
    if packed and on_cuda and attn not in PADDING_FREE:
        raise MedtuneError(f"{key}: {attn} with packed rows on CUDA builds a dense length x length block mask per "
                           "row (slow, quadratic memory); use auto, flash_attention_2 or flex_attention, or set "
                           "data.packing: false")


def flattens_batches(model) -> bool:
    """Return True when batches for ``model`` must be one padding-free row: flash attention reads
    sample boundaries from ``position_ids`` only in a batch of one row."""
    attn = getattr(model.config, "_attn_implementation", None) or ""
    return attn.startswith("flash_attention")


def accel_kwargs(cfg, model) -> dict:
    """Return the ``TrainingArguments`` keywords of the speed knobs (Liger, torch.compile)."""
    kwargs = {}
    if cfg.train.liger_kernel:
        _check_liger_model(model)
        kwargs["use_liger_kernel"] = True
    if cfg.train.torch_compile:
        kwargs["torch_compile"] = True
    return kwargs


def _check_liger_model(model) -> None:
    """Refuse a model Liger has no kernels for (liger would log a warning and patch nothing)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", "")
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise MedtuneError(f"train.liger_kernel: Liger has no kernels for model type '{model_type}' "
                           f"(it supports {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)[:8])}, …); set it false")
