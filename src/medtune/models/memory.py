"""Training memory of a stage config, from the model's config.json alone (no weights load).

Example::

    from medtune.models.memory import Setting, estimate, read_shape
    shape = read_shape("runs/tiny")                       # layers, widths, vocab from config.json
    est = estimate(shape, Setting(method="full", batch=8, length=1024, dtype_bytes=2))
    est.peak / 2**30                                      # GiB

``medtune plan CONFIG.yaml`` prints this per component with a verdict and settings that fit.

What is counted (bytes; T = rows x length tokens of one micro-batch; b = bytes of the compute
dtype; h, kv, I = hidden, key/value and MLP widths; V = vocabulary):

- weights: every parameter in the load dtype (qlora: decoder linears at 0.5 byte + nf4 block
  constants, the rest upcast to fp32 as ``prepare_model_for_kbit_training`` does); a live DPO/KTO
  reference of a full fine-tune adds a second copy;
- gradients and AdamW state: trainable parameters only, each in its own dtype (pure-bf16 full
  fine-tuning keeps no fp32 master copy; PEFT adapters are fp32): 1x and 2x their bytes;
- activations per decoder layer and token, what autograd saves (Korthikanti et al. 2022 adapted
  to RMSNorm + SwiGLU + grouped-query SDPA, no dropout): two norms h(4 + 2b) each (an fp32 copy of
  the input, the normed tensor and the output; frozen norm weights save h(4 + b)), attention
  (3h + 2kv)b (q, k, v after RoPE, SDPA's output and the o_proj input), MLP 4Ib (gate, SiLU, up,
  product). Frozen layers below the trained ones of ``freeze`` save nothing. With gradient
  checkpointing each layer keeps only its input hb, and one layer is recomputed at a time;
- logits: T x V x (4 log-softmax output + 4 its gradient + b the gradient into lm_head);
- peak: weights + AdamW state + the larger of (activations + logits + the gradients that exist
  meanwhile: lm_head's, or all of them under accumulation) and (all gradients); fused AdamW
  steps add no temporaries. On CUDA 1 GiB of context and allocator slack is added (not part of
  ``torch.cuda.max_memory_allocated``, which ``allocated`` matches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from medtune.errors import MedtuneError

GIB = 2**30
CUDA_OVERHEAD = 1 * GIB  # CUDA context + caching-allocator slack beyond the allocated peak
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit block absmax + fp32 second level
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Stages whose micro-batch forwards two rows per sample (chosen + rejected, or KTO's KL pairs).
PAIR_STAGES = ("rm", "dpo", "orpo", "simpo", "kto")


@dataclass(frozen=True)
class ModelShape:
    """The widths of a llama-like decoder, read from its config."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """Return the shape of a transformers ``PretrainedConfig``: exact for llama, qwen2, qwen3 and
        mistral; other decoders are read as llama-like (RMSNorm, rotary GQA attention, SwiGLU MLP)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        qwen2 = config.model_type == "qwen2"
        return cls(
            model_type=config.model_type, hidden=config.hidden_size, intermediate=config.intermediate_size,
            layers=config.num_hidden_layers, heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
            vocab=config.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=qwen2 or bool(getattr(config, "attention_bias", False)),
            o_bias=bool(getattr(config, "attention_bias", False)) and not qwen2,
            mlp_bias=bool(getattr(config, "mlp_bias", False)), qk_norm=config.model_type == "qwen3",
        )

    def linears(self) -> dict:
        """Return ``{name: (in, out, bias)}`` of one decoder layer's linear modules."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q, self.qkv_bias), "k_proj": (h, kv, self.qkv_bias), "v_proj": (h, kv, self.qkv_bias),
                "o_proj": (q, h, self.o_bias), "gate_proj": (h, i, self.mlp_bias), "up_proj": (h, i, self.mlp_bias),
                "down_proj": (i, h, self.mlp_bias)}

    def linear_parameters(self) -> int:
        """Return the parameters of one layer's linear modules (weights and biases)."""
        return sum(i * o + (o if bias else 0) for i, o, bias in self.linears().values())

    def layer_parameters(self) -> int:
        """Return one decoder layer's parameters: linears, two norms (+ q/k norms for qwen3)."""
        return self.linear_parameters() + 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    def head_parameters(self, classifier: bool = False) -> int:
        """Return lm_head's own parameters (0 when tied to the embedding); a classifier's score row."""
        if classifier:
            return self.hidden
        return 0 if self.tied else self.vocab * self.hidden

    def parameters(self, classifier: bool = False) -> int:
        """Return every parameter of the causal LM (or of the one-label classifier), counted once."""
        return (self.embedding_parameters() + self.layers * self.layer_parameters() + self.hidden
                + self.head_parameters(classifier))


@dataclass(frozen=True)
class Setting:
    """The training choices memory depends on (from a stage config, or varied by ``suggest``)."""

    method: str = "lora"
    batch: int = 8
    accum: int = 1
    length: int = 1024
    dtype_bytes: int = 2  # 2: bf16 / fp16, 4: fp32
    checkpointing: bool = False
    cuda: bool = True
    stage: str = "sft"
    rank: int = 8
    target: tuple = ("all",)
    bits: int = 4
    trainable_layers: int = 2
    modules_to_save: tuple = ()
    num_virtual_tokens: int = 16
    live_reference: bool = False  # dpo / kto reference.live

    def rows(self) -> int:
        return self.batch * (2 if self.stage in PAIR_STAGES else 1)

    def describe(self) -> str:
        ckpt = ", gradient checkpointing" if self.checkpointing else ""
        return f"{self.method}, batch {self.batch} x accumulation {self.accum}{ckpt}"


@dataclass
class Estimate:
    """Bytes per component, the peak they add up to, and the parameter counts behind them."""

    components: dict = field(default_factory=dict)
    allocated: int = 0  # the peak of live tensors (compare with torch.cuda.max_memory_allocated)
    peak: int = 0  # allocated + CUDA context and allocator slack
    parameters: int = 0
    trainable: int = 0

    def gib(self) -> dict:
        return {k: round(v / GIB, 3) for k, v in self.components.items()}


def read_shape(path: str, trust_remote_code: bool = False) -> ModelShape:
    """Return the shape in ``path``'s config.json (an adapter dir: its base's); no weights load."""
    from medtune.models.load import adapter_base, is_adapter_dir

    if is_adapter_dir(path):
        path = adapter_base(path)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise MedtuneError(f"model '{path}' has no config.json: cannot plan memory without the model's shape")
    if not Path(path).is_dir():
        raise MedtuneError(f"model '{path}' is not a local model dir (medtune plan reads its config.json; "
                           "download the model first)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise MedtuneError(f"{path}/config.json: {str(exc).strip().splitlines()[0]}") from None
    config = getattr(config, "text_config", None) or config
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if getattr(config, k, None) is None]
    if missing:
        raise MedtuneError(f"{path}/config.json: no {', '.join(missing)}: not a decoder medtune can plan for")
    return ModelShape.from_config(config)


def setting_from_config(cfg, cuda: bool) -> Setting:
    """Return the memory-relevant choices of a ``StageConfig`` on CUDA (``cuda``) or CPU."""
    a, t, m = cfg.adapter, cfg.train, cfg.model
    dtype = {"float32": 4, "bfloat16": 2, "float16": 2}.get(m.dtype, 2 if cuda else 4)
    length = cfg.data.max_length + (cfg.rl.max_new_tokens if cfg.stage in ("grpo", "rloo") else 0)
    return Setting(method=a.method, batch=t.batch_size, accum=t.grad_accum, length=length, dtype_bytes=dtype,
                   checkpointing=t.gradient_checkpointing, cuda=cuda, stage=cfg.stage, rank=a.rank,
                   target=tuple(a.target), bits=a.bits, trainable_layers=a.trainable_layers,
                   modules_to_save=tuple(a.modules_to_save), num_virtual_tokens=a.num_virtual_tokens,
                   live_reference=cfg.preference.reference == "live" and cfg.stage in ("dpo", "kto"))


# --------------------------------------------------------------------------------------------
# components


def trainable_parameters(shape: ModelShape, s: Setting) -> tuple[int, int]:
    """Return ``(trainable parameters, their bytes each)`` for the method of ``s``."""
    classifier = s.stage == "rm"
    if s.method == "full":
        return shape.parameters(classifier), s.dtype_bytes
    saved = _modules_to_save(shape, s)
    if s.method == "freeze":
        layers = min(s.trainable_layers, shape.layers)
        head = shape.head_parameters(classifier) if classifier else 0
        return layers * shape.layer_parameters() + saved + head, s.dtype_bytes
    if s.method == "prefix":
        return s.num_virtual_tokens * shape.layers * 2 * shape.kv_heads * shape.head_dim, 4
    names = LINEARS if list(s.target) == ["all"] else [n for n in LINEARS if n in s.target]
    per_layer = sum(s.rank * (i + o) + (o if s.method == "dora" else 0)
                    for name, (i, o, _) in shape.linears().items() if name in names)
    head = shape.hidden if classifier else 0  # the score head trains in full
    return shape.layers * per_layer + saved + head, 4  # PEFT keeps adapter weights in fp32


def _modules_to_save(shape: ModelShape, s: Setting) -> int:
    sizes = {"embed_tokens": shape.embedding_parameters(), "lm_head": shape.vocab * shape.hidden}
    return sum(sizes.get(name, 0) for name in s.modules_to_save)


def weight_bytes(shape: ModelShape, s: Setting) -> float:
    """Return the bytes of the loaded weights (quantized for qlora; a live reference doubles them)."""
    total = shape.parameters(s.stage == "rm")
    if s.method == "qlora":
        linear = shape.layers * shape.linear_parameters()
        per = NF4_BYTES if s.bits == 4 else 1.0
        weights = linear * per + (total - linear) * 4  # the rest upcast to fp32
    else:
        weights = total * s.dtype_bytes
    weights += _modules_to_save(shape, s) * s.dtype_bytes  # PEFT trains a copy beside the original
    if s.live_reference and s.method in ("full", "freeze"):
        weights += total * s.dtype_bytes  # a frozen copy of the starting weights
    return weights


def layer_activation_bytes(shape: ModelShape, s: Setting) -> float:
    """Return the bytes one decoder layer saves for backward, per token (see the module docstring)."""
    h, kv, i, b = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate, s.dtype_bytes
    norms = 2 * h * (4 + (2 * b if s.method == "full" else b))  # frozen norm weights save no input
    attention = (3 * h + 2 * kv) * b
    mlp = 4 * i * b
    lora_casts = 0.0
    if s.method in ("lora", "dora", "qlora") and b != 4:
        # PEFT casts each target's input to the fp32 adapter dtype; autocast saves a compute-dtype copy
        names = LINEARS if list(s.target) == ["all"] else [n for n in LINEARS if n in s.target]
        lora_casts = sum(inp for name, (inp, _, _) in shape.linears().items() if name in names) * b
    return norms + attention + mlp + lora_casts


def activation_bytes(shape: ModelShape, s: Setting) -> float:
    """Return the activations saved for backward in one micro-batch (before the logits)."""
    tokens = s.rows() * s.length
    per_layer = layer_activation_bytes(shape, s)
    layers = min(s.trainable_layers, shape.layers) if s.method == "freeze" else shape.layers
    final_norm = shape.hidden * (4 + 2 * s.dtype_bytes)
    if s.checkpointing:
        return tokens * (layers * shape.hidden * s.dtype_bytes + per_layer + final_norm)
    return tokens * (layers * per_layer + final_norm)


def logit_bytes(shape: ModelShape, s: Setting) -> float:
    """Return the loss's logits memory: log-softmax output and its gradient in fp32, the gradient
    into lm_head in the compute dtype (a reward model scores one number per row: none)."""
    if s.stage == "rm":
        return 0.0
    return s.rows() * s.length * shape.vocab * (4 + 4 + s.dtype_bytes)


def estimate(shape: ModelShape, s: Setting) -> Estimate:
    """Return the training memory of ``s`` on a model of ``shape``, per component and at peak."""
    trainable, tbytes = trainable_parameters(shape, s)
    grads = trainable * tbytes
    parts = {
        "weights": weight_bytes(shape, s),
        "gradients": grads,
        "optimizer state": 2 * grads,  # AdamW exp_avg + exp_avg_sq, each in the parameter's dtype
        "activations": activation_bytes(shape, s),
        "logits": logit_bytes(shape, s),
    }
    head_trains = s.method == "full" or "lm_head" in s.modules_to_save or "embed_tokens" in s.modules_to_save
    meanwhile = grads if s.accum > 1 else (shape.vocab * shape.hidden * tbytes if head_trains else 0)
    backward = parts["activations"] + parts["logits"] + min(meanwhile, grads)
    allocated = parts["weights"] + parts["optimizer state"] + max(backward, grads)
    overhead = CUDA_OVERHEAD if s.cuda else 0
    if overhead:
        parts["CUDA context + allocator"] = overhead
    return Estimate({k: int(v) for k, v in parts.items()}, int(allocated), int(allocated + overhead),
                    shape.parameters(s.stage == "rm"), trainable)


# --------------------------------------------------------------------------------------------
# what fits


def candidates(s: Setting):
    """Yield ``s``, then settings that need less memory, in the order to try them: gradient
    checkpointing, smaller batches at the same effective batch, LoRA instead of a full or frozen
    fine-tune, a 4-bit (qlora) base on CUDA."""
    methods = [s.method]
    if s.method in ("full", "freeze"):
        methods.append("lora")
    if s.cuda and s.method != "qlora" and s.method != "prefix":
        methods.append("qlora")
    for method in methods:
        bits = 4 if method == "qlora" else s.bits
        yield dataclasses.replace(s, method=method, bits=bits)
        if method == "prefix":  # prefix tuning cannot checkpoint
            continue
        for batch in _smaller_batches(s.batch):
            yield dataclasses.replace(s, method=method, bits=bits, checkpointing=True, batch=batch,
                                      accum=s.accum * s.batch // batch)


def _smaller_batches(batch: int) -> list[int]:
    """Return ``batch``, then halvings down to 1, each dividing ``batch`` (same effective batch)."""
    found = [batch]
    while found[-1] > 1:
        nxt = found[-1] // 2
        while batch % nxt:
            nxt -= 1
        found.append(nxt)
    return found


def suggest(shape: ModelShape, s: Setting, budget: float):
    """Return ``(setting, estimate)``: the first of ``candidates(s)`` whose peak fits ``budget``
    bytes, or None when none does."""
    for option in candidates(s):
        found = estimate(shape, option)
        if found.peak <= budget:
            return option, found
    return None


# --------------------------------------------------------------------------------------------
# GPUs and time


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # what the driver reports as usable
    bf16_tflops: float  # dense bf16 tensor-core peak (fp16 where the card has no bf16)


GPUS = {g.name.lower(): g for g in (
    GPU("H200-141GB", 139.8, 989), GPU("H100-80GB", 79.6, 989), GPU("H100-PCIe-80GB", 79.6, 756),
    GPU("A100-80GB", 79.2, 312), GPU("A100-40GB", 39.4, 312), GPU("L40S-48GB", 44.4, 362),
    GPU("A6000-48GB", 47.5, 155), GPU("L4-24GB", 22.0, 121), GPU("A10G-24GB", 22.0, 70),
    GPU("RTX4090-24GB", 23.6, 165), GPU("RTX3090-24GB", 23.6, 71), GPU("V100-32GB", 31.7, 125),
    GPU("T4-16GB", 14.6, 65), GPU("B200-192GB", 178.4, 2250),
)}
ASSUMED_MFU = 0.35  # share of the GPU's peak a well-fed fine-tune reaches (gpu_suite measures it)


def find_gpu(name: str) -> GPU:
    """Return the GPU named ``name``: case and separators ignored, a unique prefix is enough
    (``h100`` = ``H100-80GB``, whose PCIe sibling has the same memory; ``a100`` is ambiguous)."""
    from medtune.errors import did_you_mean

    def norm(text: str) -> str:
        return "".join(c for c in text.lower() if c.isalnum())

    hits = [g for g in GPUS.values() if norm(g.name).startswith(norm(name))] if norm(name) else []
    if hits and len({g.memory_gib for g in hits}) == 1:
        return hits[0]
    if hits:
        raise MedtuneError(f"--gpu: '{name}' could be {' or '.join(g.name for g in hits)}; name one")
    raise MedtuneError(f"--gpu: unknown GPU '{name}'" + did_you_mean(name, [g.name for g in GPUS.values()])
                       + "; or pass --memory GB")


def matmul_parameters(shape: ModelShape) -> int:
    """Return the parameters of every matmul per token (linears and lm_head; embeddings are lookups)."""
    return shape.layers * shape.linear_parameters() + shape.vocab * shape.hidden


def assumed_tokens_per_second(shape: ModelShape, s: Setting, gpu: GPU) -> float:
    """Return ASSUMED_MFU x the GPU's bf16 peak / FLOPs per token (6N full, 4N frozen-base methods;
    gradient checkpointing recomputes the forward: +2N)."""
    k = 6 if s.method == "full" else 4
    k += 2 if s.checkpointing else 0
    return ASSUMED_MFU * gpu.bf16_tflops * 1e12 / (k * matmul_parameters(shape))
