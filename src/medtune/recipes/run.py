"""Train one stage, top-down: set up (output dir, data, model, examples, trainer) -> train -> save.

A recipe (:mod:`medtune.recipes.recipe`) says what differs per stage; this module runs its steps
in order, so a fix here reaches every stage. Example::

    from medtune.config import load_stage_config
    from medtune.recipes.run import run_stage
    result = run_stage(load_stage_config("sft.yaml"))
    result.metrics["train_loss"]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from medtune.config import StageConfig
from medtune.config.stages import packs_rows, stage_recipe, stage_spec
from medtune.errors import MedtuneError
from medtune.recipes.run_dir import (
    LINEAGE,
    check_data_unchanged,
    claim_output,
    finish_record,
    is_main_process,
    output_state,
    read_log_history,
    resume_point,
    write_lineage,
    write_log_history,
)
from medtune.recipes.tracking import add_tracking, save_loss_plot
from medtune.recipes.trainer import collect_metrics, save_outputs, training_kwargs


@dataclass
class StageResult:
    output: Path
    metrics: dict = field(default_factory=dict)
    log_history: list = field(default_factory=list)
    skipped: bool = False  # True when the output already held this finished run


@dataclass
class StageSetup:
    """What training needs, loaded and checked before the output dir is claimed."""

    files: list
    tokenizer: object
    model: object
    train_set: object
    eval_set: object
    stats: object
    mixture: dict | None = None  # data.mixture: the samples each source gave (lineage)


def run_stage(cfg: StageConfig, overwrite: bool = False, quiet: bool = False,
              callbacks=()) -> StageResult:
    """Train one stage as ``cfg`` says and return where its HF-native output was written.

    ``callbacks`` are extra transformers ``TrainerCallback`` objects (progress hooks, tests).
    """
    recipe, out = stage_recipe(cfg.stage), Path(cfg.output)
    guard_stage_output(cfg)  # before anything is written, and before --overwrite empties the dir
    state = output_state(cfg, out, overwrite)
    if state == "complete":
        lineage = json.loads((out / LINEAGE).read_text(encoding="utf-8"))
        return StageResult(out, lineage.get("metrics", {}), read_log_history(out), skipped=True)
    if state == "finish":  # killed after saving its outputs: the record is finished, nothing retrains
        lineage = finish_record(out) if is_main_process() else {}
        return StageResult(out, lineage.get("metrics", {}), read_log_history(out))
    if state == "resume":
        check_data_unchanged(out)
    started = time.time()
    setup = set_up(cfg, recipe)
    if is_main_process():  # under torchrun rank 0 owns the output dir
        claim_output(cfg, out, replace=(state == "replace"), files=setup.files)  # once the inputs are known good
    trainer = make_trainer(cfg, recipe, setup, quiet, callbacks)
    resume = resume_point(out) if state == "resume" else None
    train_out = trainer.train(resume_from_checkpoint=resume)
    metrics = collect_metrics(trainer, train_out, setup.eval_set is not None)
    metrics.update(recipe.extra_metrics(cfg, trainer, setup.eval_set))
    recipe.prepare_save(cfg, trainer)
    metrics["parameters"] = _count_parameters(setup.model)  # of the model as saved
    if resume:
        metrics["resumed_from"] = Path(resume).name
    if trainer.args.should_save:  # under torchrun only rank 0 writes the outputs
        save_outputs(trainer.model, setup.tokenizer, out)
        write_log_history(out, trainer.state.log_history)
        save_loss_plot(out, cfg.stage, trainer.state.log_history)
        write_lineage(cfg, out, setup.files, setup.stats, metrics, started, mixture=setup.mixture)
    return StageResult(out, metrics, trainer.state.log_history)


def stage_inputs(cfg: StageConfig) -> dict:
    """Return the paths stage ``cfg`` reads, by config key (a hub id or other missing path is no
    local input); an adapter's base model is one too."""
    from medtune.models.load import adapter_base, is_adapter_dir

    model = _existing(cfg.model.path)
    base = _existing(adapter_base(model)) if model and is_adapter_dir(model) else None
    return {"model.path": model, "the base of model.path": base, "data.train": cfg.data.train,
            "reward_model": _existing(cfg.reward_model), "train.deepspeed": cfg.train.deepspeed or None}


def guard_stage_output(cfg: StageConfig, inputs: dict | None = None) -> None:
    """Refuse an output dir equal to, inside or containing one of the stage's inputs (``inputs``,
    default :func:`stage_inputs`), with ``--overwrite`` too: replacing it would delete them."""
    from medtune.files import guard_outputs

    guard_outputs({"output": cfg.output}, stage_inputs(cfg) if inputs is None else inputs)


def _existing(path: str) -> str | None:
    return path if path and Path(path).exists() else None


def set_up(cfg: StageConfig, recipe) -> StageSetup:
    """Return the stage's data, tokenizer, model and examples; bad input fails here, before any
    output is written (data is read first: it fails fastest; then the template check of the first
    conversations, before the model loads)."""
    from medtune.data.tokenize.cache import tokenized_datasets
    from medtune.inference.template_check import check_first_conversations
    from medtune.models.accel import attention_for
    from medtune.models.load import load_tokenizer, resolve_device
    from medtune.recipes.recipe import StageExamples

    check_launch(cfg)
    corpus = read_stage_data(cfg)
    path = _absolute_if_local(cfg.model.path)
    tokenizer = load_tokenizer(path, cfg.model.template, cfg.model.trust_remote_code)
    # what `medtune template check` verifies, on the first conversations: training renders what serving prompts
    check_first_conversations(tokenizer, _first_records(corpus), cfg.data.reasoning)
    model = recipe.load_model(cfg, path)
    attn = attention_for(cfg.model.attn_implementation, resolve_device(cfg.model.device), packs_rows(cfg))
    if attn and getattr(model.config, "_attn_implementation", None) != attn:
        model.set_attn_implementation(attn)  # e.g. padding-free packing on CUDA
    model.config.use_cache = False  # packed rows need it; training never uses the KV cache
    make = StageExamples(recipe, cfg, tokenizer)
    train_set, eval_set, stats = tokenized_datasets(cfg, make, tokenizer, corpus, pack=packs_rows(cfg))
    return StageSetup(corpus.files, tokenizer, model, train_set, eval_set, stats)


def _first_records(corpus, count: int = 64):
    """The first records of ``corpus`` in input order (the template check reads a few of them)."""
    return corpus.records(range(min(count, len(corpus)))).load()


def make_trainer(cfg: StageConfig, recipe, setup: StageSetup, quiet: bool, callbacks=()):
    """Return the recipe's trainer on the adapted model, the curriculum order applied."""
    from transformers import set_seed

    from medtune.models.adapters import apply_adapter

    set_seed(cfg.train.seed)  # adapter init is random too: same config, same run
    setup.model = apply_adapter(setup.model, cfg.adapter, adapter_dir=_adapter_to_continue(cfg))
    curriculum = cfg.data.curriculum != "none"
    if curriculum:
        from medtune.recipes.curriculum import order_rows

        setup.train_set = order_rows(cfg, setup.train_set, setup.model, setup.tokenizer)
    if cfg.data.mixture != "none":  # the whole run's samples, in the schedule's order
        import os

        from medtune.recipes.mixture import schedule_rows

        setup.train_set, setup.mixture = schedule_rows(cfg, setup.train_set, setup.files,
                                                       int(os.environ.get("WORLD_SIZE", "1")))
    kwargs = training_kwargs(cfg, setup.model, setup.eval_set is not None, quiet)
    trainer = recipe.make_trainer(cfg, setup.model, setup.tokenizer, setup.train_set, setup.eval_set, kwargs)
    trainer.curriculum = curriculum or cfg.data.mixture != "none"  # keep the dataset's order
    add_tracking(trainer, cfg)
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def _count_parameters(model) -> dict:
    from medtune.models.adapters import count_parameters

    return count_parameters(model)


def check_launch(cfg: StageConfig) -> None:
    """Refuse DeepSpeed / FSDP and speed knobs (attention, Liger, compile) where they cannot run,
    instead of silently running without them."""
    import importlib.util

    import torch

    from medtune.models.accel import check_accel
    from medtune.models.load import resolve_device

    t = cfg.train
    check_accel(cfg, resolve_device(cfg.model.device), packs_rows(cfg))
    if t.deepspeed:
        if not Path(t.deepspeed).is_file():
            raise MedtuneError(f"train.deepspeed: '{t.deepspeed}' is not a file (a DeepSpeed JSON config)")
        if importlib.util.find_spec("deepspeed") is None:
            raise MedtuneError("train.deepspeed needs the deepspeed package (pip install deepspeed) and a GPU")
    if (t.deepspeed or t.fsdp) and not torch.cuda.is_available():
        name = "deepspeed" if t.deepspeed else "fsdp"
        raise MedtuneError(f"train.{name} needs CUDA GPUs (on CPU transformers would silently fall back to "
                           "plain DDP); for CPU data parallel use torchrun without it")


def _adapter_to_continue(cfg: StageConfig):
    """Return the adapter dir an incremental LoRA stage keeps training (None: a fresh adapter)."""
    from medtune.models.load import is_adapter_dir

    if not cfg.adapter.incremental:
        return None
    path = _absolute_if_local(cfg.model.path)
    if not is_adapter_dir(path):
        raise MedtuneError(f"adapter.incremental: '{cfg.model.path}' is not an adapter dir (no adapter_config.json); "
                           "set it false to train a new adapter on this model")
    return path


def read_stage_data(cfg: StageConfig):
    """Return the stage's inputs spooled to disk (a ``Corpus``), refusing a shape the stage cannot
    train on (a data.mixture may hold text and conversation entries, each of one shape)."""
    from medtune.data.readers.inputs import read_corpus

    mixed = cfg.data.mixture != "none"
    shapes = MIXED_SHAPES if mixed else stage_spec(cfg.stage).shapes
    corpus = read_corpus(cfg.data.train, cfg.data.format, mixed=mixed)
    for f in corpus.files if mixed else corpus.files[:1]:
        if f.shape not in shapes:
            raise MedtuneError(f"{f.path}: stage {cfg.stage} needs {' or '.join(shapes)} data, "
                               f"got {f.shape} (format {f.format})")
    return corpus


MIXED_SHAPES = ("text", "messages")  # what a data.mixture trains: text (every token), conversations


def _absolute_if_local(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).is_dir() else path


