"""Load tokenizers and causal LMs from a local dir or a hub id, with the chat template attached.

Example::

    from medtune.models.load import load_tokenizer, load_model
    tok = load_tokenizer("runs/tiny", template="chatml")
    model = load_model("runs/tiny", dtype="float32", device="cpu")

``trust_remote_code`` is off unless the config asks for it; weights load from safetensors only.
An adapter dir (PEFT ``adapter_config.json``) loads its base model and merges the adapter in
(prefix-tuning adapters cannot be merged: they come back as an unmerged ``PeftModel``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from medtune.errors import MedtuneError

log = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_adapter_dir(path) -> bool:
    """Return True when ``path`` is a PEFT adapter folder."""
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(path) -> str:
    """Return the base model an adapter folder was trained on."""
    cfg = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    return cfg.get("base_model_name_or_path") or ""


def check_model_path(path: str) -> str:
    """Return ``path`` if it is a local dir or looks like a hub id; else raise a one-line error."""
    if not path:
        raise MedtuneError("model path is empty")
    if Path(path).is_dir():
        return path
    if Path(path).exists():
        raise MedtuneError(f"model path '{path}' is a file, not a model directory")
    # "runs/sft-typo" looks like a hub id, but when "runs" is a local dir it is a mistyped path:
    # say so at once instead of retrying the hub for a minute.
    looks_local = Path(path.split("/")[0]).is_dir()
    if looks_local or not _HUB_ID.match(path) or path.startswith((".", "/", "~")):
        from medtune.errors import did_you_mean

        parent = Path(path).parent
        hint = did_you_mean(Path(path).name, [p.name for p in parent.iterdir() if p.is_dir()]) \
            if parent.is_dir() else ""
        hint = hint if hint.startswith(" (did you mean") else ""
        raise MedtuneError(f"model path '{path}' not found: no such directory{hint} (expected a local model dir "
                           "or a hub id like org/name)")
    return path


def resolve_dtype(dtype: str, device: str):
    """Return the torch dtype for ``dtype`` on ``device`` (auto: bf16 on capable GPUs, else fp32)."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in ("bfloat16", "float16") and device == "cpu":
        raise MedtuneError(f"dtype {dtype} is not supported on CPU here; use float32 or auto")
    return getattr(torch, dtype)


def resolve_device(device: str = "auto") -> str:
    """Return ``cuda`` when available for ``auto``; refuse an unavailable CUDA device."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedtuneError(f"device '{device}' requested but CUDA is not available")
    return device


def _from_pretrained(loader, path: str, **kwargs):
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedtuneError(f"cannot load '{path}': {first}") from None


def load_tokenizer(path: str, template: str = "auto", trust_remote_code: bool = False):
    """Return the tokenizer of ``path`` with its chat template set (``template`` name or auto)."""
    from transformers import AutoTokenizer

    from medtune.data.tokenize.templates import matching_builtin, template_source

    check_model_path(path)
    tok = _from_pretrained(AutoTokenizer, path, trust_remote_code=trust_remote_code)
    if template != "auto":
        tok.chat_template = template_source(template)
    elif not tok.chat_template:
        raise MedtuneError(
            f"'{path}' has no chat template of its own; set model.template to a built-in name (e.g. chatml)"
        )
    elif (name := matching_builtin(tok.chat_template, tok.bos_token or "", tok.eos_token or "")) is not None:
        # Same prompts, and the built-in's generation blocks mark the learned tokens.
        log.info("template: auto: '%s' has the chat template of built-in '%s'; using the built-in", path, name)
        tok.chat_template = template_source(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding positions never carry labels or attention
    return tok


def load_model(path: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
               quant_bits: int | None = None, merge_adapters: bool = True, attn_implementation: str = "auto"):
    """Return the causal LM at ``path`` on ``device``.

    An adapter dir loads its base model with the adapter merged in (``merge_adapters``) or, for a
    stage that keeps training that adapter, the bare base. ``quant_bits`` 4 or 8 loads the weights
    quantized with bitsandbytes (CUDA only; refused elsewhere, never silently ignored).
    ``attn_implementation`` is transformers' name (sdpa, eager, flex_attention, flash_attention_2);
    auto: transformers' default (sdpa, or eager for a model without sdpa).
    """
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if is_adapter_dir(path):
        base = load_model(adapter_base(path), dtype, device, trust_remote_code, quant_bits,
                          attn_implementation=attn_implementation)
        return merge_adapter(base, path) if merge_adapters else base
    check_model_path(path)
    extra = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    if quant_bits:
        extra["quantization_config"] = quantization_config(quant_bits, device, torch_dtype)
        extra["device_map"] = {"": device}
    model = _from_pretrained(
        AutoModelForCausalLM, path, dtype=torch_dtype, trust_remote_code=trust_remote_code,
        use_safetensors=True, **extra,
    )
    return model if quant_bits else model.to(device)


def load_classifier(path: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                    quant_bits: int | None = None):
    """Return a one-label sequence classifier (a reward model) at ``path`` on ``device``.

    A causal LM dir keeps its backbone and gets a new score head (seeded by the caller); an adapter
    dir is merged into its base first; a classifier dir loads as saved.
    """
    import copy

    from transformers import AutoModelForSequenceClassification

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if is_adapter_dir(path):
        causal = load_model(path, dtype, device, trust_remote_code)
        config = copy.deepcopy(causal.config)
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch_dtype,
                                                                trust_remote_code=trust_remote_code)
        getattr(model, model.base_model_prefix).load_state_dict(getattr(causal, causal.base_model_prefix).state_dict())
        return model.to(device)
    check_model_path(path)
    extra = {}
    if quant_bits:
        extra = {"quantization_config": quantization_config(quant_bits, device, torch_dtype), "device_map": {"": device}}
    model = _from_pretrained(AutoModelForSequenceClassification, path, num_labels=1, dtype=torch_dtype,
                             trust_remote_code=trust_remote_code, use_safetensors=True, **extra)
    return model if quant_bits else model.to(device)


def quantization_config(bits: int, device: str, compute_dtype):
    """Return a bitsandbytes config for a ``bits``-bit base (nf4 + double quant for 4 bits)."""
    import importlib.util

    if not device.startswith("cuda"):
        raise MedtuneError(f"{bits}-bit loading (qlora) needs a CUDA GPU and bitsandbytes; this run is on "
                           f"{device}. Use adapter.method: lora on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MedtuneError(f"{bits}-bit loading needs the bitsandbytes package: pip install 'medtune[gpu]'")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(model) -> bool:
    """Return True when ``model`` holds bitsandbytes-quantized (not mergeable) weights."""
    return bool(getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None))


def merge_adapter(model, adapter_dir: str):
    """Return ``model`` with the PEFT adapter in ``adapter_dir`` applied, ready for inference.

    LoRA / DoRA adapters are merged into the weights (a plain model comes back). Prompt-learning
    adapters (prefix tuning) add learned key/values at run time and cannot be merged: the
    ``PeftModel`` comes back unmerged, in eval mode.
    """
    from peft import PeftModel

    if not is_adapter_dir(adapter_dir):
        raise MedtuneError(f"'{adapter_dir}' is not an adapter dir (no adapter_config.json)")
    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        raise MedtuneError(
            f"'{adapter_dir}': adapter weights must be adapter_model.safetensors (pickle files are not loaded)"
        )
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    if peft_model.peft_config[peft_model.active_adapter].is_prompt_learning:
        return peft_model.eval()
    merged = peft_model.merge_and_unload()
    # A new adapter trained on top must record this dir (not the bare base) as its parent.
    merged.name_or_path = merged.config._name_or_path = str(adapter_dir)
    return merged
