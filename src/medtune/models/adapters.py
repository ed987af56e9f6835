"""Adapter methods: which weights of a model train (``adapter.method`` in a stage config).

full: every weight; freeze: the last N decoder layers plus named modules; lora / dora / qlora:
PEFT low-rank adapters (dora adds magnitude vectors, qlora sits on a 4/8-bit base); prefix:
P-Tuning v2 prefix tuning (learned per-layer key/value prefixes). Example::

    from transformers import AutoModelForCausalLM
    from medtune.config.schema import AdapterConfig
    from medtune.models.adapters import apply_adapter, count_parameters
    model = AutoModelForCausalLM.from_pretrained("runs/tiny")
    model = apply_adapter(model, AdapterConfig(method="dora", rank=8, target=["q_proj", "v_proj"]))
    count_parameters(model)  # {"total": ..., "trainable": ...}

:func:`check_adapter_fits` raises the same one-line errors without touching the model (it works on
a model built on the meta device), so a pipeline can validate every stage before training one.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from medtune.config.schema import LORA_METHODS
from medtune.errors import MedtuneError

DECODER_LISTS = ("layers", "h", "blocks", "layer")  # ModuleList names of decoder stacks in HF models
CLS_HEADS = ("score", "classifier")  # sequence-classification heads (start random: they always train)


def apply_adapter(model, cfg, adapter_dir=None):
    """Return ``model`` prepared for training with ``cfg`` (an AdapterConfig).

    ``adapter_dir``: an existing PEFT adapter to keep training (incremental LoRA) instead of a new
    one; the config's LoRA options must match the adapter saved there.
    """
    if adapter_dir:
        from peft import PeftModel

        check_same_adapter(model, cfg, adapter_dir)
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    check_adapter_fits(model, cfg)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "freeze":
        return _freeze(model, cfg)
    if cfg.method == "prefix":
        return _prefix(model, cfg)
    return _lora(model, cfg)


def check_adapter_fits(model, cfg) -> None:
    """Raise a one-line MedtuneError if ``cfg`` (AdapterConfig or StageConfig) cannot apply to ``model``.

    Reads module / parameter names and the config only: ``model`` is left as it was and may live on
    the meta device.
    """
    a = getattr(cfg, "adapter", cfg)
    if hasattr(model, "peft_config"):
        raise MedtuneError(f"the model is a prefix-tuning adapter ({type(model).__name__}), which cannot be merged "
                           f"into its base; train method {a.method} from the base model instead")
    if a.method == "freeze":
        freeze_plan(model, a)
    elif a.method in LORA_METHODS:
        lora_targets(model, a.target)
    elif a.method == "prefix":
        _check_prefix(model)
    if a.method != "freeze":
        _check_modules_exist(model, a.modules_to_save, "adapter.modules_to_save")


def count_parameters(model) -> dict:
    """Return total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# --- freeze ---------------------------------------------------------------------------------------

def decoder_layers(model) -> tuple[str, int]:
    """Return ``(prefix, count)`` of the model's decoder stack, e.g. ``("model.layers", 32)``."""
    import torch

    stacks = [(name, len(m)) for name, m in model.named_modules()
              if isinstance(m, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in DECODER_LISTS]
    if not stacks:
        raise MedtuneError(f"adapter.method freeze: no decoder layer list ({'/'.join(DECODER_LISTS)}) found in "
                           f"{type(model).__name__}; use trainable_layers: 0 with trainable_modules, or lora")
    return max(stacks, key=lambda s: s[1])


def freeze_plan(model, a) -> set[str]:
    """Return the parameter names that train under method freeze (tied names included)."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    chosen = set()
    if a.trainable_layers:
        prefix, count = decoder_layers(model)
        if not 0 < a.trainable_layers <= count:
            raise MedtuneError(f"adapter.trainable_layers is {a.trainable_layers} but {type(model).__name__} "
                               f"has {count} decoder layers ({prefix}.0-{count - 1})")
        layers = [f"{prefix}.{i}." for i in range(count - a.trainable_layers, count)]
        chosen.update(n for n in names if n.startswith(tuple(layers)))
    for entry in a.trainable_modules:
        hits = {n for n in names if entry in n}
        if not hits:
            raise MedtuneError(f"adapter.trainable_modules: '{entry}' matches no parameter name; names look like "
                               f"{', '.join(_outside_layers(model, names)[:8])}")
        chosen |= hits
    return chosen


def _outside_layers(model, names) -> list[str]:
    """Return parameter names outside repeated layers, then a first-layer example (for hints)."""
    import re

    layered = [n for n in names if re.search(r"\.\d+\.", n)]
    first = [n for n in layered if re.search(r"\.0\.", n)]
    return [n for n in names if n not in layered] + first


def _freeze(model, a):
    train = freeze_plan(model, a) | set(_head_parameters(model))
    params = dict(model.named_parameters(remove_duplicate=False))
    for p in params.values():
        p.requires_grad_(False)
    for name in train:  # a tied weight is one tensor: training either name trains both
        params[name].requires_grad_(True)
    return model


def _head_parameters(model) -> list[str]:
    """Return the parameter names of a sequence-classification head (empty for other models)."""
    head = classification_head(model)
    return [n for n, _ in model.named_parameters() if head and n.startswith(head + ".")]


def classification_head(model) -> str | None:
    """Return the head module name of a ``*ForSequenceClassification`` model, else None."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return None
    return next((h for h in CLS_HEADS if hasattr(model, h)), None)


# --- lora / dora / qlora --------------------------------------------------------------------------

def _is_lora_capable(module) -> bool:
    import torch

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    return isinstance(module, kinds) or type(module).__name__ == "Conv1D"  # Conv1D: GPT-2 style linears


def linear_names(model) -> list[str]:
    """Return the distinct short names of the model's linear modules (``q_proj``, ``lm_head``, …)."""
    import torch

    seen = {}
    for name, m in model.named_modules():
        if name and (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"):
            seen.setdefault(name.rsplit(".", 1)[-1], None)
    return list(seen)


def _matches(name: str, entry: str) -> bool:
    """True when module ``name`` is ``entry`` or ends with ``.entry`` (PEFT's list matching)."""
    return name == entry or name.endswith("." + entry)


def lora_targets(model, target) -> str | list[str]:
    """Return PEFT ``target_modules`` for ``adapter.target``; refuse entries matching no module."""
    if list(target) == ["all"]:
        return "all-linear"
    capable = [n for n, m in model.named_modules() if n and _is_lora_capable(m)]
    for entry in target:
        if not any(_matches(n, entry) for n in capable):
            raise MedtuneError(f"adapter.target: '{entry}' matches no module of {type(model).__name__}; "
                               f"its linear modules are {', '.join(linear_names(model))} (or use [all])")
    return list(target)


def _check_modules_exist(model, entries, key: str) -> None:
    """Refuse an entry of ``entries`` that names no module of ``model`` (PEFT suffix matching)."""
    names = [n for n, _ in model.named_modules() if n]
    for entry in entries:
        if not any(_matches(n, entry) for n in names):
            short = dict.fromkeys(n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit())
            raise MedtuneError(f"{key}: '{entry}' names no module of {type(model).__name__} "
                               f"(its modules: {', '.join(short)})")


def lora_config(model, a):
    """Return the PEFT ``LoraConfig`` for ``a`` (an AdapterConfig with method lora/dora/qlora)."""
    from peft import LoraConfig

    head = classification_head(model)
    modules_to_save = list(a.modules_to_save) + ([head] if head and head not in a.modules_to_save else [])
    targets = lora_targets(model, a.target)
    return LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=targets,
        use_rslora=a.rslora, use_dora=a.method == "dora", modules_to_save=modules_to_save or None,
        task_type="SEQ_CLS" if head else "CAUSAL_LM",
        # Tied input/output embeddings stay one tensor, so a merged model saves and reloads as trained.
        ensure_weight_tying=_touches_tied(model, modules_to_save + ([] if targets == "all-linear" else targets)),
    )


def _touches_tied(model, entries) -> bool:
    """True when one of ``entries`` names a module whose weight is tied to another."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    modules = {k.rsplit(".", 1)[0] for pair in tied.items() for k in pair}
    return any(_matches(m, e) for m in modules for e in entries)


def _lora(model, a):
    from peft import get_peft_model

    if a.method == "qlora":
        from peft import prepare_model_for_kbit_training

        from medtune.models.load import is_quantized

        if not is_quantized(model):
            raise MedtuneError("adapter.method qlora needs a base loaded in 4/8 bits "
                               "(load_model(..., quant_bits=adapter.bits)); use method lora for a full-precision base")
        # Freezes the base, upcasts non-quantized weights to fp32; checkpointing stays train.gradient_checkpointing's call.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(model, a))


def check_same_adapter(model, a, adapter_dir) -> None:
    """Refuse continuing the adapter in ``adapter_dir`` with LoRA options that differ from it."""
    saved = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    if saved.get("peft_type") != "LORA":
        raise MedtuneError(f"adapter.incremental: '{adapter_dir}' holds a {saved.get('peft_type')} adapter; "
                           "only LoRA/DoRA adapters can be continued")
    pairs = {"rank": (a.rank, saved.get("r")), "alpha": (a.alpha, saved.get("lora_alpha")),
             "dropout": (a.dropout, saved.get("lora_dropout")), "rslora": (a.rslora, saved.get("use_rslora")),
             "method": (a.method, "dora" if saved.get("use_dora") else "lora")}
    for key, (ours, theirs) in pairs.items():
        if ours != theirs:
            raise MedtuneError(f"adapter.{key} is {ours} but the adapter being continued ({adapter_dir}) has "
                               f"{theirs}; set adapter.{key}: {theirs} or incremental: false")
    targets, theirs = lora_targets(model, a.target), saved.get("target_modules") or []
    if targets != "all-linear" and _pick(model, targets) != _pick(model, _as_list(theirs)):
        raise MedtuneError(f"adapter.target {list(a.target)} differs from the adapter being continued "
                           f"({adapter_dir}: {theirs}); set it to that adapter's targets or incremental: false")
    head = [h for h in [classification_head(model)] if h]
    ours, theirs = [*a.modules_to_save, *head], saved.get("modules_to_save") or []
    if _tensors(model, _pick(model, ours)) != _tensors(model, _pick(model, theirs)):
        raise MedtuneError(f"adapter.modules_to_save {list(a.modules_to_save)} differs from the adapter being "
                           f"continued ({adapter_dir}: {theirs}); match it or set incremental: false")


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _pick(model, entries) -> set[str]:
    """Return the names of the modules that ``entries`` select (PEFT list matching)."""
    return {n for n, _ in model.named_modules() if n and any(_matches(n, e) for e in entries)}


def _tensors(model, names) -> set[int]:
    """Return the ids of the parameters of modules ``names`` (tied modules share theirs)."""
    return {id(p) for n in names for p in model.get_submodule(n).parameters()}


# --- prefix ---------------------------------------------------------------------------------------

def _check_prefix(model) -> None:
    """Refuse a model that prefix tuning cannot drive (no KV cache input or no head/layer sizes)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    sizes = [("num_hidden_layers", "num_layers", "n_layer"), ("hidden_size", "n_embd", "d_model"),
             ("num_attention_heads", "n_head", "num_heads")]
    missing = [group[0] for group in sizes if not any(getattr(config, k, None) for k in group)]
    takes_cache = "past_key_values" in inspect.signature(model.forward).parameters
    if missing or not takes_cache:
        why = f"its config lacks {', '.join(missing)}" if missing else "its forward takes no past_key_values"
        raise MedtuneError(f"adapter.method prefix: {type(model).__name__} cannot take prefix tuning ({why}); "
                           "use lora")


def _prefix(model, a):
    from peft import PrefixTuningConfig, get_peft_model

    head = classification_head(model)
    modules_to_save = list(a.modules_to_save) + ([head] if head and head not in a.modules_to_save else [])
    config = PrefixTuningConfig(
        task_type="SEQ_CLS" if head else "CAUSAL_LM", num_virtual_tokens=a.num_virtual_tokens,
        prefix_projection=a.prefix_projection, modules_to_save=modules_to_save or None,
    )
    return get_peft_model(model, config)
