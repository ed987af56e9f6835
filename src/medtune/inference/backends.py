"""Pick the generation backend: Hugging Face ``generate`` (any machine) or vLLM (CUDA).

Example::

    from medtune.inference.backends import load_engine
    engine = load_engine("runs/sft", adapters={"tcm": "runs/tcm-lora"}, backend="hf")
"""

from __future__ import annotations

from medtune.errors import MedtuneError
from medtune.inference.engines import HFEngine


def load_engine(path, adapters: dict | None = None, backend: str = "hf", **kwargs):
    """Return an HF or vLLM engine for ``path`` with named LoRA ``adapters`` ({name: dir})."""
    if backend == "vllm":
        from medtune.inference.vllm_engine import VLLMEngine

        return VLLMEngine.load(path, adapters, **kwargs)
    if backend != "hf":
        raise MedtuneError(f"unknown backend '{backend}' (hf or vllm)")
    if kwargs.pop("tensor_parallel_size", 1) != 1:
        raise MedtuneError("--tensor-parallel-size needs --backend vllm")
    return HFEngine.load(path, adapters, **kwargs)
