"""Typed stage and pipeline configs: the YAML a user writes, validated into dataclasses.

Example::

    from medtune.config import load_stage_config
    cfg = load_stage_config("examples/sft_lora.yaml", ["train.learning_rate=1e-4"])
    cfg.train.learning_rate  # 0.0001

Unknown or misspelled keys are errors with a suggestion; values are coerced to the declared type
(YAML reads ``2e-4`` as a string) and checked against the allowed choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

from medtune.errors import MedtuneError, did_you_mean

# Adapter methods this version implements (stages: config/stages.py); anything else is refused.
ADAPTER_METHODS = ("full", "freeze", "lora", "dora", "qlora", "prefix")
LORA_METHODS = ("lora", "dora", "qlora")
# Experiment trackers train.report_to accepts, with the package each needs.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "none": None}
# Adapter options each method reads; setting any other option away from its default is an error.
METHOD_OPTIONS = {
    "full": (),
    "freeze": ("trainable_layers", "trainable_modules"),
    "lora": ("rank", "alpha", "dropout", "target", "rslora", "modules_to_save", "incremental"),
    "dora": ("rank", "alpha", "dropout", "target", "rslora", "modules_to_save", "incremental"),
    "qlora": ("rank", "alpha", "dropout", "target", "rslora", "modules_to_save", "bits"),
    "prefix": ("num_virtual_tokens", "prefix_projection", "modules_to_save"),
}

def _choices(*values):
    return {"choices": values}


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts (NaN and inf are refused for every float field)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: ``low`` itself is refused
    high_open: bool = False

    def holds(self, value) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and value == self.high))

    def text(self) -> str:
        """``> 0``, ``>= 1`` or ``in [0, 1)``, as the config reference and the errors write it."""
        low, high = _number_text(self.low), _number_text(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number_text(x) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x}"


def _at_least(low):
    return {"range": Range(low)}


def _above(low):
    return {"range": Range(low, low_open=True)}


def _within(low, high, high_open=False):
    return {"range": Range(low, high, high_open=high_open)}


SEED_MAX = 2**32 - 1  # numpy's seeds, which transformers.set_seed also sets


@dataclass
class ModelConfig:
    path: str = ""  # local dir or hub id
    template: str = "auto"  # auto: the tokenizer's own chat template; or a built-in name
    # auto: bf16 on capable GPUs, fp32 on CPU
    dtype: str = field(default="auto", metadata=_choices("auto", "float32", "bfloat16", "float16"))
    device: str = "auto"  # auto: cuda if available, else cpu
    trust_remote_code: bool = False  # runs code shipped with the checkpoint: only for sources you trust
    # auto: sdpa (eager where a model has none); packed rows on CUDA get a padding-free one below.
    # flash_attention_2: fastest, CUDA + flash_attn + bf16/fp16; flex_attention: CUDA, block-sparse
    # masks compiled per shape; eager: plain matmuls, slowest (debugging).
    attn_implementation: str = field(default="auto", metadata=_choices(
        "auto", "sdpa", "eager", "flex_attention", "flash_attention_2"))


@dataclass
class DataConfig:
    # data files (JSONL, JSON, txt, CSV/TSV, Parquet; .gz / .zst JSONL or txt), directories, globs
    # (corpus/**/*.jsonl.gz), save_to_disk folders, hf:org/name[:split]; all of one shape. Each
    # entry is one curriculum bucket; records are streamed to disk, never all held in memory
    train: list[str] = field(default_factory=list)
    format: str = "auto"  # alpaca|sharegpt|messages|text|preference; auto-detected per file
    eval_split: float = field(default=0.0, metadata=_within(0, 1, high_open=True))  # fraction held out for eval loss (0 = none)
    max_length: int = field(default=1024, metadata=_at_least(8))  # tokens per sample (pt: block size)
    # sft: truncate keeps the start of a long sample; pt: truncate splits a long document into
    # blocks (nothing lost). skip drops it. Both are counted in lineage.json.
    overlength: str = field(default="truncate", metadata=_choices("truncate", "skip"))
    # Training order. none: shuffled; buckets: each data.train file is a difficulty bucket, trained
    # in the order listed (shuffled inside); length / perplexity: easy -> hard by token count or by
    # the starting model's perplexity. Any curriculum turns off length grouping.
    curriculum: str = field(default="none", metadata=_choices("none", "buckets", "length", "perplexity"))
    # Several samples per row, isolated by position ids. auto: on for pt, off for sft (on CPU
    # packed rows are slower than length-grouped batches; packing pays with FlashAttention on GPU).
    packing: str = field(default="auto", metadata=_choices("auto", "true", "false"))
    train_on_prompt: bool = False  # false: loss on assistant tokens only
    reasoning: str = field(default="learn", metadata=_choices("learn", "mask", "drop"))  # traces: learned, context only, or removed
    # Train on several sources by share of samples (pt and sft; text and conversations may mix:
    # loss on every text token, on the assistant tokens of a conversation). none: the data.train
    # entries are concatenated; constant: every phase draws data.weights; anneal: the shares move
    # linearly from data.weights (first phase) to data.final_weights (last), e.g. domain text
    # first, then instructions (HuatuoGPT-II's one-stage adaptation). The run trains
    # train.epochs x (rows of all sources) samples, each source read in shuffled passes; lineage
    # records the samples each source gave per phase and per epoch.
    mixture: str = field(default="none", metadata=_choices("none", "constant", "anneal"))
    weights: list[float] = field(default_factory=list)  # mixture: one share per data.train entry (normalised; 0 leaves it out)
    final_weights: list[float] = field(default_factory=list)  # anneal: the shares of the last phase, one per entry
    mixture_phases: int = field(default=10, metadata=_at_least(1))  # anneal: steps the shares move in (each phase's counts are exact)
    # Processes that tokenize: datasets.map's num_proc for each shard of 50k records (0: one per
    # core, at most one per 1,000 records; 1: this process only). The result is the same for any value.
    workers: int = field(default=0, metadata=_at_least(0))


@dataclass
class AdapterConfig:
    # full: all weights (best quality, most memory); freeze: only the last layers / named modules;
    # lora / dora: low-rank adapters (dora adds a magnitude vector, ~20% slower); qlora: lora on a
    # 4/8-bit base (GPU only); prefix: P-Tuning v2 prefix tuning (learned past key/values).
    method: str = "lora"
    rank: int = field(default=8, metadata=_at_least(1))  # lora: rank of the update (higher: more capacity and memory)
    alpha: int = field(default=16, metadata=_above(0))  # lora: scale of the update (alpha/rank)
    dropout: float = field(default=0.0, metadata=_within(0, 1, high_open=True))  # lora: dropout on the adapter input (0: none)
    target: list[str] = field(default_factory=lambda: ["all"])  # all = every linear layer but lm_head
    rslora: bool = False  # true: scale by alpha/sqrt(rank) instead of alpha/rank (steadier at high rank)
    # Trained and saved in full next to the adapter, e.g. [embed_tokens, lm_head] after vocab growth.
    modules_to_save: list[str] = field(default_factory=list)
    # true: keep training the adapter model.path already holds (DreamerGPT's incremental LoRA);
    # false: merge that adapter into its base and start a fresh one.
    incremental: bool = False
    bits: int = field(default=4, metadata=_choices(4, 8))  # qlora: 4 (nf4, double quant) or 8
    trainable_layers: int = field(default=2, metadata=_at_least(0))  # freeze: the last N decoder layers train
    trainable_modules: list[str] = field(default_factory=list)  # freeze: names (substrings) that train too
    num_virtual_tokens: int = field(default=16, metadata=_at_least(1))  # prefix: learned prefix length (ChatGLM P-Tuning v2 used 128)
    prefix_projection: bool = False  # prefix: MLP reparameterisation (more parameters, steadier)


@dataclass
class TrainConfig:
    # passes over the data (fractions allowed); 0 only with train.max_steps > 0
    epochs: float = field(default=3.0, metadata=_at_least(0))
    max_steps: int = field(default=-1, metadata=_at_least(-1))  # -1: train.epochs decides; > 0 overrides it
    # peak learning rate (lora ~1e-4..5e-4; full fine-tuning ~1e-5..1e-4)
    learning_rate: float = field(default=2.0e-4, metadata=_above(0))
    lr_scheduler: str = field(  # learning-rate shape after warmup
        default="cosine", metadata=_choices("linear", "cosine", "constant", "constant_with_warmup")
    )
    warmup_ratio: float = field(default=0.0, metadata=_at_least(0))  # < 1: share of steps warming up; >= 1: a step count
    weight_decay: float = field(default=0.0, metadata=_at_least(0))  # AdamW decoupled weight decay
    batch_size: int = field(default=8, metadata=_at_least(1))  # samples per device per step (memory grows with it)
    grad_accum: int = field(default=1, metadata=_at_least(1))  # steps summed per update: effective batch = batch_size x grad_accum
    max_grad_norm: float = field(default=1.0, metadata=_at_least(0))  # gradient clipping (0: off)
    group_by_length: bool = True  # true: batches of similar length, less padding (faster)
    gradient_checkpointing: bool = False  # true: less memory, ~30% slower
    logging_steps: int = field(default=10, metadata=_at_least(1))  # log losses every N updates
    save_steps: int = field(default=0, metadata=_at_least(-1))  # 0: checkpoint once per epoch; -1: never (no resume, less disk I/O)
    # checkpoints kept while training (0: all); removed when the run finishes
    save_total_limit: int = field(default=2, metadata=_at_least(0))
    seed: int = field(default=42, metadata=_within(0, SEED_MAX))  # seeds data order, adapter init and sampling: same config, same run
    neftune_alpha: float = field(default=0.0, metadata=_at_least(0))  # > 0: NEFTune noise on input embeddings while training (e.g. 5)
    deepspeed: str = ""  # path to a DeepSpeed JSON config (ZeRO-2/3); GPU + deepspeed package only
    fsdp: str = ""  # e.g. "full_shard auto_wrap": PyTorch FSDP under torchrun/accelerate; GPU only
    liger_kernel: bool = False  # true: Liger's fused Triton kernels: less memory, faster; CUDA + liger-kernel
    torch_compile: bool = False  # true: faster steps after a first one of minutes (compiling); CUDA only
    # Where losses, learning rate, grad norm, tokens/s and stage metrics go: tensorboard (event
    # files in <output>/tensorboard), wandb, mlflow (their packages and settings), or none.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class PreferenceConfig:
    """Offline preference stages: rm, dpo, orpo, simpo, kto."""

    beta: float = field(default=0.0, metadata=_at_least(0))  # 0: the stage's default (dpo/kto 0.1, orpo 0.1 as lambda, simpo 2.0)
    loss: str = field(default="sigmoid", metadata=_choices("sigmoid", "ipo", "hinge"))  # dpo only
    label_smoothing: float = field(default=0.0, metadata=_within(0, 0.5, high_open=True))  # dpo sigmoid: assumed share of flipped labels (conservative DPO)
    # dpo/kto reference log-probs: precomputed (one pass before training, no reference model in
    # memory) or live (reference forward every step). Same loss either way.
    reference: str = field(default="precomputed", metadata=_choices("precomputed", "live"))
    simpo_gamma: float = field(default=0.5, metadata=_at_least(0))  # simpo: target reward margin
    desirable_weight: float = field(default=1.0, metadata=_above(0))  # kto: weight of desirable (label true) examples
    undesirable_weight: float = field(default=1.0, metadata=_above(0))  # kto: weight of undesirable examples


JUDGE_SCORE_PATTERN = r"score\s*[:：=]\s*(-?\d+(?:\.\d+)?)"


@dataclass
class JudgeRewardConfig:
    """The ``judge`` reward of grpo / rloo (``rl.reward_functions: [judge]``): an LLM verifier
    behind an OpenAI-compatible endpoint scores each completion against the record's reference.
    Replies are cached (memory, and ``cache_dir`` on disk): the same question + answer is never
    asked twice. A verdict the pattern cannot read, or an endpoint that fails after the retries,
    refuses the step with a one-line error naming the reward (no silent zero)."""

    endpoint: str = ""  # base URL, e.g. http://127.0.0.1:8000/v1 (vllm serve, medtune serve api, OpenAI)
    model: str = ""  # the model name the endpoint serves
    api_key_env: str = ""  # name of the environment variable holding the API key (the key never goes in a config)
    # Template with {question}, {answer} (the completion after any reasoning trace), {reference};
    # empty: the built-in verifier prompt (asks for "score: 1" when the answer agrees with the reference, else "score: 0").
    prompt: str = ""
    score_pattern: str = JUDGE_SCORE_PATTERN  # regex, one group: the score (the last match in the reply counts)
    score_min: float = 0.0  # the verdict's lowest score (reward 0)
    score_max: float = 1.0  # the verdict's highest score (reward 1); scores outside [min, max] are unparsable
    retries: int = field(default=3, metadata=_at_least(0))  # retries per request (backoff doubles); unparsable replies re-asked at temperature 0.7
    timeout: float = field(default=60.0, metadata=_above(0))  # seconds per request
    concurrency: int = field(default=4, metadata=_at_least(1))  # requests in flight while a batch is scored
    cache_dir: str = ""  # keep every verdict on disk here too (a rerun pays nothing twice); empty: memory only


@dataclass
class RLConfig:
    """Online RL stages: grpo, rloo (generate, score, update)."""

    num_generations: int = field(default=4, metadata=_at_least(2))  # completions sampled per prompt (the group the advantages compare)
    max_new_tokens: int = field(default=64, metadata=_at_least(1))  # longest sampled completion
    temperature: float = field(default=1.0, metadata=_above(0))  # sampling temperature of the completions (1: the model's distribution)
    beta: float = field(default=0.0, metadata=_at_least(0))  # KL penalty against the starting model (0: no reference model kept)
    # Built-in names (see medtune.recipes.rewards) or "package.module:function" from your own code.
    reward_functions: list[str] = field(default_factory=list)
    reward_weights: list[float] = field(default_factory=list)  # one per reward (model first); default 1
    # grpo only: how token losses are summed. dapo: over the batch's tokens (no length bias, TRL's
    # default); grpo: per sequence (favours short right answers); dr_grpo: by max_new_tokens; bnpo: local batch.
    loss_type: str = field(default="dapo", metadata=_choices("grpo", "dr_grpo", "dapo", "bnpo"))
    judge: JudgeRewardConfig = field(default_factory=JudgeRewardConfig)  # settings of the judge reward


@dataclass
class StageConfig:
    stage: str = "sft"  # which recipe trains: pt, sft, rm, dpo, orpo, simpo, kto, grpo, rloo
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    reward_model: str = ""  # grpo/rloo: a dir written by stage rm
    output: str = ""  # the run dir (weights or adapter, tokenizer, config.yaml, lineage.json)
    name: str = ""  # a pipeline stage's name
    from_: str = ""  # pipeline: start from this stage's output instead of the previous one

    def to_dict(self) -> dict:
        """Return the config as plain YAML-ready data (``from_`` written as ``from``)."""
        data = dataclasses.asdict(self)
        data["from"] = data.pop("from_")
        return data


@dataclass
class VocabStep:
    """A pipeline's optional first step: grow the base vocabulary with domain tokens (Ziya TCM)."""

    corpus: list[str] = field(default_factory=list)  # domain text files the new tokens are learned from
    add: int = field(default=0, metadata=_at_least(1))  # at most this many tokens are added
    min_freq: int = field(default=5, metadata=_at_least(1))  # candidates seen fewer times are ignored
    max_chars: int = field(default=4, metadata=_at_least(1))  # longest candidate token, in characters
    base: str = ""  # filled by the pipeline: the model whose vocabulary grows
    output: str = ""  # filled by the pipeline: <output>/vocab


def _field_name(key: str) -> str:
    return "from_" if key == "from" else key


def _coerce(value, tp, key: str, src: str):
    """Return ``value`` converted to type ``tp`` or raise a MedtuneError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(items)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise MedtuneError(f"{src}: {key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise MedtuneError(f"{src}: {key}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else int(str(value))
        except (TypeError, ValueError):
            raise MedtuneError(f"{src}: {key}: expected {tp.__name__}, got {value!r}") from None
        if not math.isfinite(number):  # NaN compares false to every bound: refuse it here
            raise MedtuneError(f"{src}: {key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool):  # YAML true/false for a tri-state such as data.packing
            return "true" if value else "false"
        if isinstance(value, (dict, list)) or value is None:
            raise MedtuneError(f"{src}: {key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp}")


def build(cls, data, src: str, prefix: str = ""):
    """Return a ``cls`` dataclass built from ``data``, rejecting unknown keys with a hint."""
    if not isinstance(data, dict):
        raise MedtuneError(f"{src}: {prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    public = [k if k != "from_" else "from" for k in fields]
    kwargs = {}
    for key, value in data.items():
        name = _field_name(str(key))
        dotted = f"{prefix}{key}"
        if name not in fields:
            raise MedtuneError(f"{src}: unknown key '{dotted}'" + did_you_mean(key, public))
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value or {}, src, f"{dotted}.")
            continue
        kwargs[name] = _coerce(value, tp, dotted, src)
        choices = fields[name].metadata.get("choices")
        if choices and kwargs[name] not in choices:
            raise MedtuneError(f"{src}: {dotted}: '{value}' is not allowed" + did_you_mean(value, choices))
        bounds = fields[name].metadata.get("range")
        if bounds and not bounds.holds(kwargs[name]):
            raise MedtuneError(f"{src}: {dotted} must be {bounds.text()}, got {kwargs[name]}")
    return cls(**kwargs)


def check_stage(cfg: StageConfig, src: str) -> StageConfig:
    """Return ``cfg`` after the cross-field checks a typed field cannot express, ending with the
    stage's own (its recipe's ``check_config``): all before anything loads."""
    from medtune.config.stages import stage_recipe, stage_spec

    try:
        spec = stage_spec(cfg.stage)
    except MedtuneError as exc:
        raise MedtuneError(f"{src}: {exc}") from None
    if cfg.from_:
        raise MedtuneError(f"{src}: from: only pipeline stages start from another stage")
    _check_refused(cfg, spec, src)
    if not cfg.model.path:
        raise MedtuneError(f"{src}: model.path is required")
    if not cfg.data.train:
        raise MedtuneError(f"{src}: data.train needs at least one file")
    if not cfg.output:
        raise MedtuneError(f"{src}: output is required (the run directory)")
    _check_values(cfg, src)
    if cfg.data.curriculum == "perplexity" and not spec.perplexity_order:
        from medtune.config.stages import STAGE_TABLE

        scored = " and ".join(name for name, s in STAGE_TABLE.items() if s.perplexity_order)
        raise MedtuneError(f"{src}: data.curriculum: perplexity applies to {scored} (use length or buckets)")
    _check_adapter(cfg.adapter, src)
    _check_speed_knobs(cfg, src)
    _check_trackers(cfg.train.report_to, src)
    if cfg.adapter.method == "prefix":
        if cfg.train.gradient_checkpointing:
            raise MedtuneError(f"{src}: adapter.method prefix does not work with train.gradient_checkpointing (set it false)")
        if cfg.data.packing == "true" or (cfg.data.packing == "auto" and spec.packs_by_default):
            raise MedtuneError(f"{src}: adapter.method prefix cannot train packed rows (the prefix breaks sample "
                               "isolation); set data.packing: false")
    _check_sections(cfg, spec, src)
    stage_recipe(cfg.stage).check_config(cfg, src)
    return cfg


def _check_refused(cfg: StageConfig, spec, src: str) -> None:
    """Refuse the data options (train_on_prompt, packing: true) the stage says it cannot honour."""
    chosen = {"train_on_prompt": cfg.data.train_on_prompt, "packing": cfg.data.packing == "true"}
    for option, why in spec.refuses.items():
        if chosen[option]:
            raise MedtuneError(f"{src}: " + why.format(stage=cfg.stage))


def _check_values(cfg: StageConfig, src: str) -> None:
    """Refuse numbers a single field's range cannot (those are checked in :func:`build`) and
    options that exclude each other."""
    t = cfg.train
    if t.max_steps == 0:
        raise MedtuneError(f"{src}: train.max_steps must be -1 (train.epochs decides) or > 0, got 0")
    if t.epochs == 0 and t.max_steps < 0:
        raise MedtuneError(f"{src}: train.epochs is 0 and train.max_steps is unset: nothing would train "
                           "(set train.epochs > 0 or train.max_steps > 0)")
    if cfg.train.deepspeed and cfg.train.fsdp:
        raise MedtuneError(f"{src}: train.deepspeed and train.fsdp exclude each other; pick one")
    if cfg.data.curriculum != "none" and cfg.data.packing == "true":
        raise MedtuneError(f"{src}: data.curriculum orders samples; it cannot be combined with data.packing: true")
    _check_mixture(cfg, src)


def _check_mixture(cfg: StageConfig, src: str) -> None:
    """Refuse mixture keys that disagree with data.mixture, data.train or the stage."""
    from medtune.config.stages import stage_spec, stages_mixing

    d = cfg.data
    if d.mixture == "none":
        for key in ("weights", "final_weights", "mixture_phases"):
            if changed(d, key):
                raise MedtuneError(f"{src}: data.{key} applies only with data.mixture: constant or anneal")
        return
    if not stage_spec(cfg.stage).mixes:
        raise MedtuneError(f"{src}: data.mixture applies to {' and '.join(stages_mixing())}, not stage {cfg.stage}")
    if d.curriculum != "none":
        raise MedtuneError(f"{src}: data.mixture orders samples itself; it cannot be combined with data.curriculum")
    lists = {"weights": d.weights, "final_weights": d.final_weights} if d.mixture == "anneal" else {"weights": d.weights}
    if d.mixture == "constant":
        if d.final_weights:
            raise MedtuneError(f"{src}: data.final_weights applies only with data.mixture: anneal")
        if changed(d, "mixture_phases"):
            raise MedtuneError(f"{src}: data.mixture_phases applies only with data.mixture: anneal")
    for key, values in lists.items():
        if len(values) != len(d.train):
            raise MedtuneError(f"{src}: data.{key} needs one weight per data.train entry "
                               f"({len(d.train)}), got {len(values)}")
        for i, w in enumerate(values):
            if w < 0:
                raise MedtuneError(f"{src}: data.{key}[{i}] must be >= 0, got {w}")
        if not sum(values) > 0:
            raise MedtuneError(f"{src}: data.{key}: all weights are 0")
    unused = [d.train[i] for i in range(len(d.train)) if not any(v[i] > 0 for v in lists.values())]
    if unused:
        raise MedtuneError(f"{src}: data.train entry '{unused[0]}' has weight 0 in every phase (remove it)")


def changed(section, name: str) -> bool:
    """Return True when option ``name`` of config ``section`` differs from its default."""
    default = type(section)()
    return getattr(section, name) != getattr(default, name)


def _check_adapter(a: AdapterConfig, src: str) -> None:
    if a.method not in ADAPTER_METHODS:
        raise MedtuneError(f"{src}: adapter.method: '{a.method}' is not allowed" + did_you_mean(a.method, ADAPTER_METHODS))
    for f in dataclasses.fields(a):
        if f.name != "method" and f.name not in METHOD_OPTIONS[a.method] and changed(a, f.name):
            raise MedtuneError(f"{src}: adapter.{f.name} does not apply to method {a.method}")
    if a.method in LORA_METHODS and not [t for t in a.target if t.strip()]:
        raise MedtuneError(f"{src}: adapter.target is empty: name the modules the adapter trains "
                           "(all: every linear layer but lm_head)")
    if a.method == "freeze" and a.trainable_layers < 1 and not a.trainable_modules:
        raise MedtuneError(f"{src}: adapter.trainable_layers is 0 and no trainable_modules: nothing would train")


def _check_speed_knobs(cfg: StageConfig, src: str) -> None:
    """Refuse speed knobs that cannot work with the rest of the config (the device is checked at launch)."""
    m = cfg.model
    if m.attn_implementation == "flash_attention_2" and m.dtype == "float32":
        raise MedtuneError(f"{src}: model.attn_implementation flash_attention_2 runs in bfloat16 / float16 only; "
                           "set model.dtype to bfloat16 (or auto)")


def _check_trackers(names: list[str], src: str) -> None:
    """Refuse an unknown tracker, ``none`` beside others, and a tracker whose package is missing."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise MedtuneError(f"{src}: train.report_to: '{name}' is not a tracker" + did_you_mean(name, list(TRACKERS)))
    if "none" in names and len(names) > 1:
        raise MedtuneError(f"{src}: train.report_to: none cannot be combined with {', '.join(n for n in names if n != 'none')}")
    for name in names:
        package = TRACKERS[name]
        if package and importlib.util.find_spec(package) is None:
            raise MedtuneError(f"{src}: train.report_to: {name} needs the {package} package (pip install {package}), "
                               "or set train.report_to: none")


def _check_sections(cfg: StageConfig, spec, src: str) -> None:
    """Refuse options set for a stage that would not read them (no flag is silently ignored); the
    fields of a section the stage reads are its recipe's to check."""
    from medtune.config.stages import stages_reading

    for name in ("preference", "rl"):
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            if name not in spec.sections and changed(section, f.name):
                raise MedtuneError(f"{src}: {name}.{f.name} does not apply to stage {cfg.stage}")
    if cfg.reward_model and "reward_model" not in spec.sections:
        raise MedtuneError(f"{src}: reward_model applies to {' and '.join(stages_reading('reward_model'))}")
