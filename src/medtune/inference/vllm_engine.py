"""vLLM engine: the ``HFEngine`` interface on vLLM's continuous-batching ``AsyncLLMEngine``.

Example (CUDA GPU with ``pip install vllm``)::

    medtune serve api --model runs/sft-merged --adapter tcm=runs/tcm-lora --backend vllm
    medtune infer --model runs/sft-merged --input q.jsonl --output a.jsonl --backend vllm --tensor-parallel-size 2

Prompts are rendered with the checkpoint's own chat template (by medtune, as for HF) and passed to
vLLM as token ids, so both backends see the same prompt. LoRA adapters are served by name through
``LoRARequest``; an adapter dir as ``--model`` must be merged first (``medtune export merge``).
vLLM runs its own event loop on a background thread; ``generate`` blocks its caller like
``HFEngine.generate`` and streams text through the same ``on_text`` callback.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.inference.engines import ChatEngine, Completion, load_chat_tokenizer, stop_markers


def check_vllm_available() -> None:
    """Raise a one-line error unless vLLM is installed and a CUDA GPU is visible."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise MedtuneError("--backend vllm needs a CUDA GPU; use --backend hf on this machine")
    if importlib.util.find_spec("vllm") is None:
        raise MedtuneError("--backend vllm needs the vllm package: pip install 'medtune[vllm]'")


class VLLMEngine(ChatEngine):
    backend = "vllm"

    def __init__(self, engine, tokenizer, name: str, adapters: dict, generation_config=None):
        super().__init__(name, tokenizer, adapters)
        self.engine = engine
        holder = type("Cfg", (), {"generation_config": generation_config})()
        self._stops = {k: stop_markers(holder, t) for k, t in self.tokenizers.items()}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="medtune-vllm", daemon=True).start()

    @classmethod
    def load(cls, path, adapters=None, name=None, adapter=None, template="auto", device="auto",
             dtype="auto", load_in=None, trust_remote_code=False, tensor_parallel_size=1) -> VLLMEngine:
        """Return a vLLM engine for the full model ``path`` serving LoRA ``adapters`` by name."""
        check_vllm_available()
        from transformers import GenerationConfig
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from medtune.models.load import is_adapter_dir

        if adapter or is_adapter_dir(path):
            raise MedtuneError("--backend vllm serves full models: merge the adapter first "
                               "(medtune export merge), or serve it by name with --adapter NAME=DIR")
        if load_in:
            raise MedtuneError("--load-in applies to --backend hf; for vLLM quantize the checkpoint instead")
        if device not in ("auto", "cuda"):
            raise MedtuneError(f"--device {device}: vLLM places the model itself; use --tensor-parallel-size "
                               "and CUDA_VISIBLE_DEVICES to choose GPUs")
        adapters = dict(adapters or {})
        args = AsyncEngineArgs(model=str(path), tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                               trust_remote_code=trust_remote_code, enable_lora=bool(adapters),
                               max_lora_rank=_max_rank(adapters))
        engine = AsyncLLMEngine.from_engine_args(args)
        try:
            gen = GenerationConfig.from_pretrained(str(path))
        except OSError:
            gen = None
        tokenizer = load_chat_tokenizer(path, None, template, trust_remote_code)
        return cls(engine, tokenizer, name or Path(str(path)).name, adapters, gen)

    def generate(self, prompts, params, model=None, on_text=None, cancel=None) -> list[Completion]:
        """Return ``n`` completions per prompt (prompt-major), as ``HFEngine.generate``."""
        key = self._key(model)
        if params.thinking_budget is not None:
            raise MedtuneError("thinking_budget is applied by the hf backend only; use --backend hf")
        cancel = cancel or [None] * len(prompts)
        runs = [self._one(list(p), params, key, on_text, i * params.n, cancel[i]) for i, p in enumerate(prompts)]
        future = asyncio.run_coroutine_threadsafe(_gather(runs), self._loop)
        return [c for group in future.result() for c in group]

    async def _one(self, prompt, params, key, on_text, first_row, cancel) -> list[Completion]:
        from vllm import SamplingParams as VllmParams

        stop_ids, stop_texts = self._stops[key]
        sampling = VllmParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              max_tokens=params.max_new_tokens, repetition_penalty=params.repetition_penalty,
                              seed=params.seed, stop=[*stop_texts, *params.stop], stop_token_ids=stop_ids)
        request_id, sent, final = uuid.uuid4().hex, [0] * params.n, None
        async for out in self.engine.generate({"prompt_token_ids": prompt}, sampling, request_id,
                                              lora_request=self._lora(key)):
            final = out
            if cancel is not None and cancel.is_set():
                await self.engine.abort(request_id)
                break
            for seq in out.outputs:
                if on_text and len(seq.text) > sent[seq.index]:
                    on_text(first_row + seq.index, seq.text[sent[seq.index]:], None)
                    sent[seq.index] = len(seq.text)
        return self._completions(final, prompt, params.n, on_text, first_row, cancel)

    def _completions(self, final, prompt, n, on_text, first_row, cancel) -> list[Completion]:
        done = []
        for i in range(n):
            seq = final.outputs[i] if final and i < len(final.outputs) else None
            reason = "cancelled" if cancel is not None and cancel.is_set() else (
                "length" if seq is not None and seq.finish_reason == "length" else "stop")
            text = seq.text if seq is not None else ""
            if on_text:
                on_text(first_row + i, "", reason)
            done.append(Completion(text, len(prompt), len(seq.token_ids) if seq else 0, reason))
        return done

    def _lora(self, key):
        if key is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(key, list(self.adapter_dirs).index(key) + 1, str(self.adapter_dirs[key]))


async def _gather(runs):
    return await asyncio.gather(*runs)


def _max_rank(adapters: dict) -> int:
    import json

    ranks = [json.loads((Path(d) / "adapter_config.json").read_text()).get("r", 8) for d in adapters.values()]
    return 1 << (max([16, *ranks]) - 1).bit_length()  # vLLM accepts powers of two
