"""One GPU run (≤ 7 minutes on one H200): medtune's training speed on random-initialised models
with the published shapes of Qwen2.5-1.5B and Llama-3.1-8B, side by side with plain TRL.

Run on the GPU machine (torch, transformers, peft, accelerate installed there)::

    python bench/gpu_suite.py --wheels bench/wheels --out bench/out/gpu            # ~7 minutes
    python bench/gpu_suite.py --wheels bench/wheels --out bench/out/gpu --append   # + BENCHMARKS.md
    python bench/gpu_suite.py --out bench/out/gpu --sections lora_8b,qlora_8b      # rerun a few

CPU smoke run (the same code paths on tiny shapes, < 1 minute on 2 cores; sections that need
CUDA are recorded as "skipped: <reason>"; its figures test the code paths, not speed: steps of a
few milliseconds on a shared CPU vary several-fold)::

    python bench/gpu_suite.py --smoke --out /tmp/gpu-smoke

The GPU machine lacks trl, datasets, bitsandbytes and liger-kernel (and possibly pyarrow and the
small datasets dependencies). Download their wheels beforehand, on a machine with internet, for
the GPU machine's Python (``python -V`` there; 3.11 shown) into bench/wheels/, which travels with
the working tree; ``--wheels DIR`` pip-installs every wheel in DIR with --no-deps --no-index
before anything is imported::

    pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \\
        --python-version 3.11 -d bench/wheels \\
        trl==1.16.0 datasets==5.2.0 pyarrow==26.0.1 dill==0.4.1 multiprocess==0.70.19 \\
        xxhash==4.1.0 fsspec==2026.9.0 bitsandbytes liger-kernel

(trl / datasets / pyarrow / dill / multiprocess / xxhash / fsspec pinned to the versions this
script was smoke-tested with; bitsandbytes and liger-kernel unpinned: take the newest, whose
wheels carry CUDA 13 builds. liger-kernel needs triton, which torch's CUDA wheels install.)

Sections, each isolated (an exception or its time budget ends that section only; the error string
is kept in the JSON) and run in this order while the overall --budget lasts:

- ``peak``: bf16 matmul peak, a big square matmul (fp32 in --smoke, the dtype trained there);
- ``full_ft_medtune`` / ``full_ft_trl``: full fine-tune of the 1.5B shape, bf16, seq 1024 x 8,
  medtune's run_stage vs a plain TRL SFTTrainer on the same records and settings;
- ``lora_8b``: LoRA r16 on every linear layer of the 8B shape (MFU counts the frozen base as 4N);
- ``qlora_8b``: the same on an nf4 base with gradient checkpointing, seq 1024: memory, tokens/s;
- ``liger``: full_ft_medtune with train.liger_kernel (ratio vs full_ft_medtune);
- ``packing_off`` / ``packing_on``: variable-length records, 1.5B full FT (ratio of real tokens/s;
  packed rows on CUDA train with the padding-free attention medtune picks);
- ``dpo``: a few LoRA DPO steps on the 1.5B shape; ``merge``: ``medtune export merge`` of that
  adapter and a 4-bit reload with one forward pass.

Each trained medtune section records ``planned_gb``, ``medtune plan``'s allocated-peak estimate for
its config, beside the measured ``peak_mem_gb`` (``torch.cuda.max_memory_allocated``): a GPU run
validates the planner (bench/plan_accuracy.py does so on CPU).

Tokens/s are real (non-pad) input tokens per second of steady-state training: the first
``warm`` steps (compilation, allocator growth) are left out. MFU = k·N·tokens/s / measured peak,
N = the parameters of every matmul (nn.Linear, lm_head included; embeddings are lookups),
k = 6 (full), 4 (LoRA: frozen base, no weight gradients); attention score FLOPs are not counted.
Models are random (config shapes only, no weights downloaded); the tokenizer is a small BPE trained
on the bundled sample texts, so token ids never exceed its ~4k vocabulary while the embedding and
lm_head keep the published vocabulary size (151936 / 128256): their cost is the real one.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

# Published config.json of Qwen/Qwen2.5-1.5B (huggingface.co/Qwen/Qwen2.5-1.5B).
QWEN25_1_5B = {
    "arch": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False,
    "sliding_window": 131072, "max_window_layers": 21,
}
# Published config.json of meta-llama/Llama-3.1-8B (huggingface.co/meta-llama/Llama-3.1-8B).
LLAMA31_8B = {
    "arch": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
}
# --smoke: the same architectures (rope settings included) at hidden 64, 2 layers.
SMOKE_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}

GPU = {"seq": 1024, "batch": 8, "steps": 12, "warm": 3, "lora_steps": 8, "dpo_seq": 512, "dpo_batch": 4,
       "dpo_steps": 4, "records": 128, "var_records": 400, "tok_vocab": 4000, "peak_n": 8192}
SMOKE = {"seq": 64, "batch": 2, "steps": 4, "warm": 1, "lora_steps": 4, "dpo_seq": 64, "dpo_batch": 2,
         "dpo_steps": 3, "records": 16, "var_records": 24, "tok_vocab": 600, "peak_n": 512}
# Seconds each section may take on the GPU (--smoke: 60 each); --budget bounds the whole run.
BUDGETS = {"peak": 30, "build_1.5b": 60, "build_8b": 150, "full_ft_medtune": 90, "full_ft_trl": 90, "lora_8b": 120, "qlora_8b": 120,
           "liger": 75, "packing_off": 60, "packing_on": 90, "dpo": 60, "merge": 90}
CUDA_ONLY = {"qlora_8b": "needs CUDA + bitsandbytes (4-bit nf4 base)",
             "liger": "needs CUDA + liger-kernel (Triton kernels)"}


class SectionTimeout(Exception):
    pass


class Meter:
    """Steady-state real tokens/s: a forward pre-hook counts non-pad input tokens during steps;
    time runs from the end of step ``warm`` to the end of training. Built lazily as a
    ``TrainerCallback`` subclass (transformers imported only after --wheels)."""

    def __new__(cls, pad_id: int, warm: int, cuda: bool):
        from transformers import TrainerCallback

        class _Meter(TrainerCallback):
            def __init__(self):
                self.pad, self.warm, self.cuda = pad_id, warm, cuda
                self.tokens, self.in_step, self.mark, self.steps = 0, False, None, 0

            def _sync_now(self):
                if self.cuda:
                    import torch

                    torch.cuda.synchronize()
                return time.perf_counter()

            def hook(self, module, args, kwargs):
                ids = kwargs.get("input_ids", args[0] if args else None)
                if self.in_step and ids is not None:
                    self.tokens = self.tokens + (ids != self.pad).sum()  # a device tensor: no sync

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

            def on_step_begin(self, args, state, control, **kw):
                self.in_step = True

            def on_step_end(self, args, state, control, **kw):
                self.in_step = False
                if state.global_step == self.warm:
                    self.mark = (self._sync_now(), int(self.tokens))
                self.steps = state.global_step

            def on_train_end(self, args, state, control, **kw):
                self.handle.remove()
                self.end = (self._sync_now(), int(self.tokens))

            def tokens_per_s(self) -> float:
                if self.mark is None or self.steps <= self.warm:
                    raise RuntimeError(f"only {self.steps} steps ran; need more than warm={self.warm}")
                return (self.end[1] - self.mark[1]) / (self.end[0] - self.mark[0])

        return _Meter()


class Suite:
    """Runs sections in order, each isolated and time-boxed; keeps every figure for the JSON."""

    def __init__(self, args, work: Path, out: Path):
        import torch

        self.args, self.work, self.out, self.smoke = args, work, out, args.smoke
        self.cuda = torch.cuda.is_available() and not args.smoke
        self.p = SMOKE if args.smoke else GPU
        self.results: dict = {}
        self.deadline = time.monotonic() + args.budget
        self.peak_flops = None
        self._models: dict = {}
        self._data: dict = {}

    # --- running ----------------------------------------------------------------------------
    def run(self, name: str, fn) -> None:
        wanted = self.args.sections
        if wanted and name not in wanted:
            return
        if name in CUDA_ONLY and not self.cuda:
            self.results[name] = {"skipped": f"skipped: {CUDA_ONLY[name]}; this run is on CPU"}
            return
        left = self.deadline - time.monotonic()
        if left < 5:
            self.results[name] = {"skipped": f"skipped: overall budget of {self.args.budget} s spent"}
            return
        budget = min(60 if self.smoke else BUDGETS[name], left)
        started = time.monotonic()
        self._reset_memory()
        try:
            with _time_limit(budget):
                figures = fn()
            figures.update(self._peak_memory())
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, the suite goes on
            text = f"timeout after {budget:.0f} s" if isinstance(exc, SectionTimeout) else \
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            figures = {"error": text}
        figures["section_s"] = round(time.monotonic() - started, 1)
        self.results[name] = figures
        print(f"[gpu_suite] {name}: {json.dumps(figures)}", flush=True)
        self.save()  # a run killed later keeps the sections done so far
        if self.cuda:  # free the section's GPU memory for the next one (on CPU a gc pass costs seconds)
            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def save(self) -> dict:
        """Write gpu_suite.json (environment, settings, every section, ratios); return the report."""
        report = {"environment": environment(self), "settings": self.p, "sections": self.results,
                  "ratios": ratios(self.results)}
        (self.out / "gpu_suite.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        return report

    def _reset_memory(self):
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def _peak_memory(self) -> dict:
        if not self.cuda:
            return {"peak_mem_gb": None}
        import torch

        return {"peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}

    # --- inputs -----------------------------------------------------------------------------
    def tokenizer_dir(self) -> Path:
        if "tok" not in self._models:
            from medtune.data.tokenize.templates import template_source
            from medtune.models.tiny import bundled_text, train_tokenizer

            tok = train_tokenizer(bundled_text(), self.p["tok_vocab"])
            tok.chat_template = template_source("chatml")
            path = self.work / "tokenizer"
            tok.save_pretrained(path)
            self._models["tok"] = path
        return self._models["tok"]

    def model_dir(self, name: str) -> Path:
        """A random model of the named published shape (tiny in --smoke), saved as safetensors."""
        if name not in self._models:
            self._models[name] = build_model(name, self.tokenizer_dir(), self.work / name, self.smoke, self.cuda)
        return self._models[name]

    def data(self, kind: str) -> Path:
        if kind not in self._data:
            self._data[kind] = write_records(kind, self.tokenizer_dir(), self.work, self.p)
        return self._data[kind]

    def pad_id(self) -> int:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir()).pad_token_id

    # --- sections ---------------------------------------------------------------------------
    def build(self, name: str):
        def run():
            start = time.perf_counter()
            path = self.model_dir(name)
            size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
            return {"model": name, "n_matmul": matmul_params(path), "safetensors_gb": round(size / 2**30, 2),
                    "build_s": round(time.perf_counter() - start, 1)}
        return run

    def peak(self) -> dict:
        self.peak_flops = measure_peak(self.p["peak_n"], self.cuda)
        return {"peak_tflops": float(f"{self.peak_flops / 1e12:.4g}"), "dtype": "bfloat16" if self.cuda else "float32"}

    def medtune_run(self, name: str, model: str, records: str, k: int, steps: int, **sections) -> dict:
        """Train one medtune stage through run_stage; return tokens/s, MFU and loss."""
        from medtune.config import stage_from_dict
        from medtune.recipes.run import run_stage

        p = self.p
        raw = {"stage": "sft", "model": {"path": str(self.model_dir(model)), "template": "chatml",
                                         **self._device()},
               "data": {"train": [str(self.data(records))], "max_length": p["seq"], "workers": 1},
               "adapter": {"method": "full"},
               "train": {"max_steps": steps, "batch_size": p["batch"], "learning_rate": 1e-5,
                         "lr_scheduler": "constant", "logging_steps": 1, "save_steps": -1},
               "output": str(self.work / "runs" / name)}
        for key, value in sections.items():
            raw[key] = value if not isinstance(value, dict) else {**raw.get(key, {}), **value}
        meter = Meter(self.pad_id(), p["warm"], self.cuda)
        cfg = stage_from_dict(raw, f"gpu_suite:{name}")
        result = run_stage(cfg, overwrite=True, quiet=True, callbacks=[meter])
        shutil.rmtree(result.output, ignore_errors=True)  # full weights: GBs of disk per run
        return self.figures(meter, k, model, result.metrics["train_loss"], steps=result.metrics["global_steps"],
                            planned_gb=self.planned_gb(cfg))

    def planned_gb(self, cfg) -> float:
        """`medtune plan`'s allocated peak for ``cfg`` (GiB), beside the measured peak_mem_gb."""
        from medtune.models.memory import GIB, estimate, read_shape, setting_from_config

        return round(estimate(read_shape(cfg.model.path), setting_from_config(cfg, self.cuda)).allocated / GIB, 3)

    def figures(self, meter, k: int, model: str, loss: float, **extra) -> dict:
        tps = meter.tokens_per_s()
        n = matmul_params(self.model_dir(model))
        mfu = k * n * tps / self.peak_flops if self.peak_flops else None
        if not math.isfinite(loss):
            raise RuntimeError(f"loss is not finite: {loss}")
        return {"tokens_per_s": round(tps, 1), "mfu": round(mfu, 4) if mfu is not None else None,
                "flops_per_token": f"{k}N", "n_matmul": n, "loss": round(loss, 4), **extra}

    def full_ft_medtune(self) -> dict:
        return self.medtune_run("full_ft_medtune", "qwen2.5-1.5b", "fixed", 6, self.p["steps"])

    def full_ft_trl(self) -> dict:
        return trl_sft(self, "qwen2.5-1.5b")

    def lora_8b(self) -> dict:
        lora = {"method": "lora", "rank": 16, "alpha": 32, "target": ["all"]}
        return self.medtune_run("lora_8b", "llama3.1-8b", "fixed", 4, self.p["lora_steps"], adapter=lora)

    def qlora_8b(self) -> dict:
        qlora = {"method": "qlora", "rank": 16, "alpha": 32, "bits": 4}
        return self.medtune_run("qlora_8b", "llama3.1-8b", "fixed", 4, self.p["lora_steps"], adapter=qlora,
                                train={"gradient_checkpointing": True})

    def liger(self) -> dict:
        return self.medtune_run("liger", "qwen2.5-1.5b", "fixed", 6, self.p["steps"], train={"liger_kernel": True})

    def packing(self, on: bool):
        def run():
            name = "packing_on" if on else "packing_off"
            figures = self.medtune_run(name, "qwen2.5-1.5b", "variable", 6, self.p["steps"],
                                       data={"packing": "true" if on else "false"})
            figures["attn_implementation"] = attention_used(on, self.cuda)
            return figures
        return run

    def dpo(self) -> dict:
        from medtune.config import stage_from_dict
        from medtune.recipes.run import run_stage

        p = self.p
        raw = {"stage": "dpo", "model": {"path": str(self.model_dir("qwen2.5-1.5b")), "template": "chatml",
                                         **self._device()},
               "data": {"train": [str(self.data("pairs"))], "max_length": p["dpo_seq"], "workers": 1},
               "adapter": {"method": "lora", "rank": 16, "alpha": 32},
               "train": {"max_steps": p["dpo_steps"], "batch_size": p["dpo_batch"], "learning_rate": 5e-6,
                         "logging_steps": 1, "save_steps": -1},
               "output": str(self.work / "runs" / "dpo")}
        meter = Meter(self.pad_id(), 1, self.cuda)
        cfg = stage_from_dict(raw, "gpu_suite:dpo")
        result = run_stage(cfg, overwrite=True, quiet=True, callbacks=[meter])
        self._models["dpo_adapter"] = result.output
        return self.figures(meter, 4, "qwen2.5-1.5b", result.metrics["train_loss"],
                            steps=result.metrics["global_steps"], planned_gb=self.planned_gb(cfg))

    def merge(self) -> dict:
        from medtune.cli.main import main as medtune_main

        adapter = self._models.get("dpo_adapter")
        if adapter is None:
            raise RuntimeError("no DPO adapter to merge (section dpo did not finish)")
        merged = self.work / "merged"
        start = time.perf_counter()
        code = medtune_main(["-q", "export", "merge", "--adapter", str(adapter), "-o", str(merged), "--overwrite"])
        if code != 0:
            raise RuntimeError(f"medtune export merge exited {code}")
        figures = {"merge_s": round(time.perf_counter() - start, 1)}
        if self.cuda:
            figures.update(reload_and_score(merged, 4))
        else:
            figures.update(reload_and_score(merged, None))
            figures["reload_4bit"] = "skipped: 4-bit reload needs CUDA + bitsandbytes; reloaded in float32 instead"
        return figures

    def _device(self) -> dict:
        return {"device": "cpu", "dtype": "float32"} if not self.cuda else {"device": "cuda", "dtype": "bfloat16"}


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (SIGALRM)."""
    def fire(signum, frame):
        raise SectionTimeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def install_wheels(folder: str) -> None:
    """pip-install every wheel in ``folder`` (--no-deps --no-index) before anything is imported."""
    wheels = sorted(glob.glob(str(Path(folder) / "*.whl")))
    if not wheels:
        print(f"[gpu_suite] no wheels in {folder}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", *wheels]
    subprocess.run(cmd, check=True)


def measure_peak(n: int, cuda: bool) -> float:
    """Return the measured matmul FLOP/s: bf16 on CUDA, fp32 on CPU (the dtype trained there)."""
    import torch

    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    iters = 50 if cuda else 5
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start)


def build_model(name: str, tokenizer_dir: Path, out: Path, smoke: bool, cuda: bool) -> Path:
    """Save a random model of the published shape ``name`` (tiny for ``smoke``) with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    spec = dict(QWEN25_1_5B if name.startswith("qwen") else LLAMA31_8B)
    arch = spec.pop("arch")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if smoke:
        spec.update(SMOKE_SHAPE, vocab_size=len(tok), max_position_embeddings=2048)
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    config = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch](**spec, **ids)
    torch.manual_seed(0)
    device = "cuda" if cuda else "cpu"
    with torch.device(device):  # an 8B init on the GPU takes seconds, on CPU minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    return out


def matmul_params(model_dir: Path) -> int:
    """Parameters of every matmul (nn.Linear incl. lm_head) of the model shape at ``model_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def write_records(kind: str, tokenizer_dir: Path, work: Path, p: dict) -> Path:
    """Write synthetic records: ``fixed`` (conversations of ~seq tokens), ``variable`` (10-90% of
    seq, for packing) or ``pairs`` (DPO preference pairs), cut from the bundled sample texts."""
    from transformers import AutoTokenizer

    from medtune.models.tiny import bundled_text

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    stream = tok("\n".join(bundled_text()), add_special_tokens=False)["input_ids"]
    rng = random.Random(0)

    def text(n: int) -> str:
        start = rng.randrange(0, max(1, len(stream) - n))
        return tok.decode(stream[start:start + n]).replace("<|", "< |")

    seq, rows = p["seq"], []
    if kind == "pairs":
        seq = p["dpo_seq"]
        for _ in range(p["records"]):
            prompt = [{"from": "human", "value": text(seq // 4)}]
            rows.append({"conversations": prompt, "chosen": text(seq // 2 - 16), "rejected": text(seq // 2 - 16)})
    else:
        count = p["records"] if kind == "fixed" else p["var_records"]
        for _ in range(count):
            total = seq - 16 if kind == "fixed" else rng.randint(seq // 10, seq * 9 // 10)
            user = max(4, total // 4)
            rows.append({"messages": [{"role": "user", "content": text(user)},
                                      {"role": "assistant", "content": text(max(4, total - user - 16))}]})
    path = work / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def trl_sft(suite: Suite, model: str) -> dict:
    """The same full fine-tune as full_ft_medtune with a plain TRL SFTTrainer."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    p, path = suite.p, suite.model_dir(model)
    records = [json.loads(line) for line in suite.data("fixed").read_text(encoding="utf-8").splitlines()]
    tok = AutoTokenizer.from_pretrained(path)
    args = SFTConfig(
        output_dir=str(suite.work / "runs" / "trl"), max_length=p["seq"], per_device_train_batch_size=p["batch"],
        max_steps=p["steps"], learning_rate=1e-5, lr_scheduler_type="constant", assistant_only_loss=True,
        use_cpu=not suite.cuda, bf16=suite.cuda, gradient_checkpointing=False, report_to=[], logging_steps=1,
        save_strategy="no", disable_tqdm=True, seed=42, dataloader_num_workers=0,
    )
    dtype = torch.bfloat16 if suite.cuda else torch.float32
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda" if suite.cuda else "cpu")
    meter = Meter(tok.pad_token_id, p["warm"], suite.cuda)
    trainer = SFTTrainer(model=lm, args=args, train_dataset=Dataset.from_list(records), processing_class=tok,
                         callbacks=[meter])
    trainer.remove_callback(PrinterCallback)  # medtune's side runs quiet too
    out = trainer.train()
    return suite.figures(meter, 6, model, float(out.training_loss), steps=trainer.state.global_step)


def attention_used(packed: bool, cuda: bool) -> str:
    from medtune.models.accel import attention_for

    return attention_for("auto", "cuda" if cuda else "cpu", packed) or "sdpa"


def reload_and_score(model_dir: Path, bits) -> dict:
    """Reload ``model_dir`` (``bits``-bit on CUDA, or float32 on CPU) and return one forward's loss."""
    import torch

    from medtune.models.load import load_model, load_tokenizer

    start = time.perf_counter()
    device = "cuda" if bits else "cpu"
    model = load_model(str(model_dir), "auto" if bits else "float32", device, quant_bits=bits)
    tok = load_tokenizer(str(model_dir))
    batch = tok(["高血压有哪些典型症状？头痛头晕。"], return_tensors="pt").to(device)
    with torch.no_grad():
        loss = float(model(**batch, labels=batch["input_ids"]).loss)
    if not math.isfinite(loss):
        raise RuntimeError(f"reloaded model gives a non-finite loss: {loss}")
    return {"reload_bits": bits or 32, "reload_s": round(time.perf_counter() - start, 1), "loss": round(loss, 4)}


def ratios(results: dict) -> dict:
    """medtune / TRL, liger on / off and packing on / off, from tokens/s (None when a side failed)."""
    def tps(name):
        return results.get(name, {}).get("tokens_per_s")

    def ratio(a, b):
        return round(tps(a) / tps(b), 3) if tps(a) and tps(b) else None

    out = {"medtune_vs_trl": ratio("full_ft_medtune", "full_ft_trl"),
           "liger_on_vs_off": ratio("liger", "full_ft_medtune"),
           "packing_on_vs_off": ratio("packing_on", "packing_off")}
    mem_on, mem_off = (results.get(n, {}).get("peak_mem_gb") for n in ("liger", "full_ft_medtune"))
    out["liger_peak_mem_on_vs_off"] = round(mem_on / mem_off, 3) if mem_on and mem_off else None
    return out


def table(results: dict, ratio: dict) -> str:
    lines = ["| section | tokens/s | MFU | peak GB | planned GB | loss | note |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        note = r.get("error") or r.get("skipped") or r.get("reload_4bit") or ""
        if name == "peak" and "peak_tflops" in r:
            note = f"{r['peak_tflops']} TFLOP/s {r['dtype']} matmul"
        if "attn_implementation" in r:
            note = f"attention {r['attn_implementation']}"
        if "build_s" in r:
            note = f"{r['model']}: {r['n_matmul'] / 1e6:,.1f}M matmul params, {r['safetensors_gb']} GB in {r['build_s']} s"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
        lines.append(f"| {name} | {r.get('tokens_per_s', '')} | {mfu} | {r.get('peak_mem_gb') or ''} | "
                     f"{r.get('planned_gb', '')} | {r.get('loss', '')} | {note} |")
    lines.append("")
    lines += [f"{k}: {v if v is not None else 'n/a'}" for k, v in ratio.items()]
    return "\n".join(lines)


def environment(suite: Suite) -> dict:
    import platform

    import torch

    from medtune.recipes.run_dir import library_versions

    env = {"smoke": suite.smoke, "cuda": suite.cuda, "machine": platform.machine(),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), **library_versions()}
    if suite.cuda:
        env["gpu"] = torch.cuda.get_device_name(0)
    for name in ("flash_attn", "liger_kernel", "bitsandbytes"):
        env[f"has_{name}"] = importlib.util.find_spec(name) is not None
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_suite.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (CUDA-only sections skipped)")
    parser.add_argument("--wheels", help="pip-install the wheels in this folder (--no-deps --no-index) first")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--sections", type=lambda s: set(s.split(",")), default=None,
                        help="comma-separated subset, e.g. lora_8b,qlora_8b (peak always runs)")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside transformers / TRL
    if args.wheels:
        install_wheels(args.wheels)
    if args.sections:  # what the chosen sections need runs too (its time is then not theirs)
        args.sections |= {"peak"} | ({"dpo"} if "merge" in args.sections else set())
        args.sections |= {"build_8b"} if args.sections & {"lora_8b", "qlora_8b"} else set()
        args.sections |= {"build_1.5b"} if args.sections - {"peak", "build_8b", "lora_8b", "qlora_8b"} else set()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_suite-"))
    os.environ.setdefault("MEDTUNE_CACHE", str(work / "cache"))
    try:
        suite = Suite(args, work, out)
        suite.run("peak", suite.peak)
        suite.run("build_1.5b", suite.build("qwen2.5-1.5b"))
        suite.run("full_ft_medtune", suite.full_ft_medtune)
        suite.run("full_ft_trl", suite.full_ft_trl)
        suite.run("build_8b", suite.build("llama3.1-8b"))
        for name in ("lora_8b", "qlora_8b", "liger"):
            suite.run(name, getattr(suite, name))
        suite.run("packing_off", suite.packing(False))
        suite.run("packing_on", suite.packing(True))
        suite.run("dpo", suite.dpo)
        suite.run("merge", suite.merge)
        text = table(suite.results, suite.save()["ratios"])
        if args.append and not args.smoke:
            from results import publish, section_header

            publish(section_header("gpu_suite") + f"\n\n{text}\n", append=True)
        else:
            print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
