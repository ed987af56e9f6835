"""Adapter methods: ``full`` (every weight trains) and ``lora`` (PEFT low-rank adapters)."""

from __future__ import annotations


def apply_adapter(model, cfg, adapter_dir=None):
    """Return ``model`` prepared for training with ``cfg`` (an AdapterConfig).

    ``adapter_dir``: an existing PEFT adapter to keep training (incremental LoRA) instead of a new one.
    """
    if adapter_dir:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    target = "all-linear" if cfg.target in (["all"], "all") else list(cfg.target)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def count_parameters(model) -> dict:
    """Return total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
