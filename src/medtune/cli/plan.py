"""``medtune plan``: a stage config's training memory and time, before any weights load.

Example::

    medtune plan examples/sft_lora.yaml --gpu H100
    medtune plan sft.yaml --memory 24 adapter.method=full --json

Memory comes from the model's config.json (``medtune.models.memory``); time per epoch from the
data's token count and a throughput: ``--tokens-per-second``, or one assumed for ``--gpu``.
"""

from __future__ import annotations

import json

from medtune.errors import MedtuneError
from medtune.models.memory import (
    ASSUMED_MFU,
    GIB,
    assumed_tokens_per_second,
    estimate,
    find_gpu,
    read_shape,
    setting_from_config,
    suggest,
)

COUNT_LIMIT = 20_000  # records tokenized to count an epoch's tokens; more are scaled from these


def cmd_plan(args) -> int:
    from medtune.config import load_stage_config

    gpu = find_gpu(args.gpu) if args.gpu else None
    if args.memory is not None and args.memory <= 0:
        raise MedtuneError(f"--memory must be > 0 GB, got {args.memory}")
    cfg = load_stage_config(args.config, args.overrides)
    cuda = args.device == "cuda" if args.device else bool(gpu) or cfg.model.device != "cpu"
    shape = read_shape(cfg.model.path, cfg.model.trust_remote_code)
    setting = setting_from_config(cfg, cuda)
    est = estimate(shape, setting)
    budget = gpu.memory_gib * GIB if gpu else (args.memory * GIB if args.memory else None)
    plan = {"config": args.config, "model": cfg.model.path, "model_type": shape.model_type,
            "parameters": est.parameters, "trainable": est.trainable, "device": "cuda" if cuda else "cpu",
            "setting": setting.describe(), "length": setting.length, "dtype_bytes": setting.dtype_bytes,
            "components_gb": est.gib(), "allocated_gb": round(est.allocated / GIB, 3),
            "peak_gb": round(est.peak / GIB, 3)}
    plan.update(_verdict(shape, setting, est, budget, gpu))
    plan.update(_epoch_time(cfg, shape, setting, gpu, args.tokens_per_second))
    print(json.dumps(plan, indent=2) if args.json else _render(plan))
    return 0


def _verdict(shape, setting, est, budget, gpu) -> dict:
    where = f"{gpu.memory_gib:g} GB ({gpu.name})" if gpu else (f"{budget / GIB:g} GB" if budget else "")
    if budget is None:
        return {"budget_gb": None, "fits": None,
                "verdict": f"needs {est.peak / GIB:.2f} GB (pass --gpu NAME or --memory GB for a verdict)"}
    out = {"budget_gb": round(budget / GIB, 2), "fits": est.peak <= budget}
    if out["fits"]:
        out["verdict"] = f"fits in {where} with {(budget - est.peak) / GIB:.2f} GB to spare"
        return out
    found = suggest(shape, setting, budget)
    needs = f"does not fit in {where}: needs {est.peak / GIB:.2f} GB"
    if found is None:
        out["verdict"] = f"{needs}; no setting tried fits (checkpointing, batch 1, lora, 4-bit qlora)"
        return out
    option, fits = found
    out["suggestion"] = {"method": option.method, "batch_size": option.batch, "grad_accum": option.accum,
                         "gradient_checkpointing": option.checkpointing, "peak_gb": round(fits.peak / GIB, 3)}
    out["verdict"] = f"{needs}; with {option.describe()}: {fits.peak / GIB:.2f} GB"
    return out


def _epoch_time(cfg, shape, setting, gpu, tokens_per_second) -> dict:
    tokens, how = epoch_tokens(cfg)
    out = {"tokens_per_epoch": tokens, "tokens_counted": how}
    if tokens_per_second:
        out["tokens_per_second"], out["throughput"] = tokens_per_second, "stated (--tokens-per-second)"
    elif gpu:
        out["tokens_per_second"] = round(assumed_tokens_per_second(shape, setting, gpu))
        out["throughput"] = (f"assumed: {ASSUMED_MFU:.0%} of the {gpu.name}'s {gpu.bf16_tflops:g} bf16 TFLOP/s "
                             f"(pass --tokens-per-second to state yours)")
    else:
        out["tokens_per_second"], out["throughput"] = None, "pass --tokens-per-second (or --gpu) for the time"
    out["epoch_seconds"] = round(tokens / out["tokens_per_second"], 1) if out["tokens_per_second"] else None
    return out


def epoch_tokens(cfg) -> tuple[int, str]:
    """Return ``(tokens one epoch trains on, how they were counted)``: the data's text tokenized
    with the model's tokenizer (each sample cut at data.max_length; pt packs everything)."""
    from medtune.data.readers.files import read_files

    files = read_files(cfg.data.train, cfg.data.format)
    records = [r for f in files for r in f.records]
    sample = records[:COUNT_LIMIT]
    texts = ["\n".join(_strings(r)) for r in sample]
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.model.path)
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        how = "tokenized"
    except (OSError, ValueError):
        lengths = [len(t.encode("utf-8")) // 4 for t in texts]  # ~4 bytes a token
        how = "estimated from bytes: no tokenizer"
    if cfg.stage != "pt":
        lengths = [min(n, cfg.data.max_length) for n in lengths]
    total = sum(lengths) * (len(records) / max(1, len(sample)))
    if len(records) > len(sample):
        how += f", first {len(sample):,} of {len(records):,} records scaled"
    return int(total), how


def _strings(record: dict) -> list[str]:
    """Return the text of a unified record (text, messages, prompt / chosen / rejected / completion)."""
    if "text" in record:
        return [record["text"]]
    turns = [m for key in ("messages", "prompt", "chosen", "rejected", "completion") for m in record.get(key) or []
             if isinstance(m, dict)]
    return [str(m.get("content", "")) for m in turns]


def _render(plan: dict) -> str:
    """Return the plan as a table of components and the verdict lines."""
    parts = plan["components_gb"]
    total = sum(parts.values()) or 1.0
    lines = [f"{plan['config']}: {plan['model_type']} {plan['parameters'] / 1e6:,.1f}M parameters "
             f"({plan['trainable'] / 1e6:,.2f}M trainable), {plan['setting']}, length {plan['length']}, "
             f"{'fp32' if plan['dtype_bytes'] == 4 else 'bf16'} on {plan['device']}",
             "", f"{'component':<26}{'GB':>10}{'share':>8}"]
    lines += [f"{name:<26}{gb:>10.3f}{gb / total:>8.0%}" for name, gb in parts.items()]
    lines += [f"{'peak':<26}{plan['peak_gb']:>10.3f}   (gradients replace activations during backward)", "",
              plan["verdict"]]
    tps = plan["tokens_per_second"]
    line = f"epoch: {plan['tokens_per_epoch']:,} tokens ({plan['tokens_counted']})"
    if tps:
        line += f" / {tps:,} tokens/s = {_duration(plan['epoch_seconds'])}; {plan['throughput']}"
    else:
        line += f"; {plan['throughput']}"
    lines.append(line)
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
