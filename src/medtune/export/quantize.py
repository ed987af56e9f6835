"""Quantized models: dynamic int8 on CPU (in memory) and bitsandbytes 8/4-bit model dirs on a GPU.

Example::

    medtune export quantize --model runs/sft-merged --bits 4 -o runs/sft-nf4     # CUDA + bitsandbytes
    python -c "
    from medtune.models.load import load_model
    from medtune.export.quantize import quantize_dynamic_int8
    model = quantize_dynamic_int8(load_model('runs/sft-merged', 'float32', 'cpu'))
    "

``quantize_dynamic_int8`` stores Linear weights as int8 and quantizes activations per batch at run
time (PyTorch's eager dynamic quantization): for CPU inference in this process only, it cannot be
saved with ``save_pretrained``. ``quantize_to_dir`` writes a bitsandbytes checkpoint that
transformers reloads on a GPU. On CPU, for a smaller file, export GGUF instead:
``medtune export gguf --dtype q8_0``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from medtune.errors import MedtuneError

QUANT_RECORD = "quantize.json"


def quantize_dynamic_int8(model, quantize_head: bool = False):
    """Return ``model`` (fp32, on CPU) with its Linear layers converted in place to dynamic int8.

    ``quantize_head`` false (default) keeps ``lm_head`` in fp32: with tied embeddings it stays the
    same matrix as the input embedding (an int8 head is a second copy), and the logits that sampling
    reads are not rounded twice. True: faster decoding, most with a large vocabulary (the head is ~25%
    of Qwen2-0.5B's weights). bench/quant_speed.py, 27M llama, vocab 4096: 1.22× vs 1.40× fp32's
    tokens/s at batch 1; next-token agreement with fp32 0.88 vs 0.855.
    """
    import torch

    _check_int8_input(model)
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise MedtuneError(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic; "
                           "use an fp32 model or export GGUF (medtune export gguf --dtype q8_0)") from None
    # Per-output-channel weight scales: on a random 35M llama, max logit error 0.21 vs 0.27 per tensor.
    names = {name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and (quantize_head or name != "lm_head")}
    with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, still shipped and working
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model.eval(), dict.fromkeys(names, per_channel_dynamic_qconfig),
                                dtype=torch.qint8, inplace=True)


def _check_int8_input(model) -> None:
    """Refuse models dynamic int8 cannot take: on CUDA, already quantized, or not fp32."""
    import torch

    from medtune.models.load import is_quantized

    param = next(model.parameters())
    if param.device.type != "cpu":
        raise MedtuneError(f"dynamic int8 quantization runs on CPU only; the model is on {param.device} "
                           "(on a GPU use 8/4-bit bitsandbytes: medtune export quantize --bits 8)")
    if is_quantized(model):
        raise MedtuneError("the model is already quantized (bitsandbytes); load the unquantized weights")
    if param.dtype != torch.float32:
        raise MedtuneError(f"dynamic int8 needs an fp32 model (this one is {param.dtype}); "
                           "load it with dtype float32")


def quantize_to_dir(model_dir: str, out_dir: str, bits: int, overwrite: bool = False) -> Path:
    """Write ``model_dir`` quantized with bitsandbytes (8-bit or 4-bit nf4) to ``out_dir``; return it.

    Needs a CUDA GPU and bitsandbytes; refused (never an fp32 copy) elsewhere. The tokenizer and its
    chat template are saved with the weights.
    """
    import torch

    from medtune.export.merge import _claim
    from medtune.models.load import is_quantized, load_model, load_tokenizer

    _check_quantize_args(model_dir, bits)
    if not torch.cuda.is_available():
        raise MedtuneError(f"{bits}-bit export needs a CUDA GPU and bitsandbytes (none here); on CPU use "
                           "medtune export gguf --dtype q8_0, or quantize_dynamic_int8 in memory")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "auto", "cuda", quant_bits=bits)  # refuses a missing bitsandbytes
    if not is_quantized(model):
        raise MedtuneError(f"loading '{model_dir}' with {bits}-bit bitsandbytes gave an unquantized model; "
                           "nothing written")
    out = _claim(Path(out_dir), overwrite)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {"source": str(Path(model_dir).resolve()), "bits": bits,
              "method": "bitsandbytes nf4" if bits == 4 else "bitsandbytes int8",
              "quantized_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / QUANT_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out


def _check_quantize_args(model_dir: str, bits: int) -> None:
    """Refuse a bad bit width, a missing dir, an adapter dir or an already quantized checkpoint."""
    from medtune.models.load import check_model_path, is_adapter_dir

    if bits not in (4, 8):
        raise MedtuneError(f"--bits {bits} is not supported; choose 8 (int8) or 4 (nf4)")
    check_model_path(model_dir)
    if is_adapter_dir(model_dir):
        raise MedtuneError(f"'{model_dir}' is an adapter; merge it first (medtune export merge --adapter "
                           f"{model_dir} -o DIR), then quantize DIR")
    config = Path(model_dir) / "config.json"
    if config.is_file() and "quantization_config" in json.loads(config.read_text(encoding="utf-8")):
        raise MedtuneError(f"'{model_dir}' is already quantized; quantize the unquantized model instead")
