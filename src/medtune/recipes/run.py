"""The plumbing every training stage shares: output dir, data, model, trainer, saving, lineage.

A recipe (``pt``, ``sft``, …) only says how records become training examples; this module does
the rest, so a fix here reaches every stage. Example::

    from medtune.config import load_stage_config
    from medtune.recipes.run import run_stage
    result = run_stage(load_stage_config("sft.yaml"))
    result.metrics["train_loss"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from medtune.config import StageConfig, save_config
from medtune.config.loader import read_yaml
from medtune.errors import MedtuneError

LINEAGE = "lineage.json"
CHECKPOINTS = "checkpoints"
log = logging.getLogger("medtune")


@dataclass
class StageResult:
    output: Path
    metrics: dict = field(default_factory=dict)
    log_history: list = field(default_factory=list)
    skipped: bool = False  # True when the output already held this finished run


def run_stage(cfg: StageConfig, overwrite: bool = False, quiet: bool = False,
              callbacks=()) -> StageResult:
    """Train one stage as ``cfg`` says and return where its HF-native output was written.

    ``callbacks`` are extra transformers ``TrainerCallback`` objects (progress hooks, tests).
    """
    from transformers import set_seed

    from medtune.models.adapters import apply_adapter, count_parameters
    from medtune.recipes import RECIPES

    recipe = RECIPES[cfg.stage]
    out = Path(cfg.output)
    state = output_state(cfg, out, overwrite)
    if state == "complete":
        lineage = json.loads((out / LINEAGE).read_text(encoding="utf-8"))
        return StageResult(out, lineage.get("metrics", {}), read_log_history(out), skipped=True)
    started = time.time()
    check_launch(cfg)
    files, tokenizer, model = load_inputs(cfg, recipe)
    train_set, eval_set, stats = build_rows(cfg, recipe, tokenizer, files)
    if is_main_process():  # under torchrun rank 0 owns the output dir
        claim_output(cfg, out, replace=(state == "replace"))  # only once the inputs are known good
    set_seed(cfg.train.seed)  # adapter init is random too: same config, same run
    model = apply_adapter(model, cfg.adapter, adapter_dir=_adapter_to_continue(cfg))
    if cfg.data.curriculum != "none":
        from medtune.recipes.curriculum import order_rows

        train_set = order_rows(cfg, train_set, model, tokenizer)
    kwargs = training_kwargs(cfg, model, eval_set is not None, quiet)
    make_trainer = getattr(recipe, "make_trainer", default_trainer)
    trainer = make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs)
    trainer.curriculum = cfg.data.curriculum != "none"
    for callback in callbacks:
        trainer.add_callback(callback)
    resume = resume_point(out) if state == "resume" else None
    train_out = trainer.train(resume_from_checkpoint=resume)
    metrics = collect_metrics(trainer, train_out, eval_set is not None)
    if hasattr(recipe, "extra_metrics"):
        metrics.update(recipe.extra_metrics(cfg, trainer, eval_set))
    metrics["parameters"] = count_parameters(model)
    if resume:
        metrics["resumed_from"] = Path(resume).name
    if trainer.args.should_save:  # under torchrun only rank 0 writes the outputs
        save_outputs(trainer.model, tokenizer, out)
        history = trainer.state.log_history
        (out / "log_history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
        write_lineage(cfg, out, files, stats, metrics, started)
    return StageResult(out, metrics, trainer.state.log_history)


def output_state(cfg: StageConfig, out: Path, overwrite: bool) -> str:
    """Return ``new``, ``replace``, ``resume`` or ``complete``; refuse a dir holding another run.

    A dir holds a run once it has checkpoints or a lineage; a config alone (a run that failed
    before training) does not count. Nothing is written here.
    """
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"output '{out}' exists and is not a directory")
    holds_run = (out / LINEAGE).is_file() or (out / CHECKPOINTS).is_dir()
    if not holds_run:
        others = [p.name for p in out.iterdir() if p.name != "config.yaml"] if out.exists() else []
        if others and not overwrite:
            raise MedtuneError(f"output '{out}' holds other files ({others[0]}, …); choose an empty "
                               "dir or pass --overwrite to replace it")
        return "replace" if out.exists() else "new"
    if overwrite:
        return "replace"
    saved = out / "config.yaml"
    if not (saved.is_file() and read_yaml(saved) == cfg.to_dict()):
        raise MedtuneError(
            f"output '{out}' already holds a different run; choose another output or pass --overwrite"
        )
    return "complete" if (out / LINEAGE).is_file() else "resume"


def claim_output(cfg: StageConfig, out: Path, replace: bool) -> None:
    """Create ``out`` (emptied first when replacing) and write the resolved config into it."""
    if replace:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")


def is_main_process() -> bool:
    """Return True in a single process, or in rank 0 of a torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def resume_point(out: Path):
    """Return the newest complete checkpoint of the run in ``out`` (partial ones are removed)."""
    from medtune.recipes.trainer import drop_partial_checkpoints, last_checkpoint

    if is_main_process():
        drop_partial_checkpoints(out / CHECKPOINTS)
    found = last_checkpoint(out / CHECKPOINTS)
    if found:
        log.info("resuming from %s", found)
    return found


def check_launch(cfg: StageConfig) -> None:
    """Refuse DeepSpeed / FSDP and speed knobs (attention, Liger, compile) where they cannot run,
    instead of silently running without them."""
    import importlib.util

    import torch

    from medtune.models.accel import check_accel
    from medtune.models.load import resolve_device
    from medtune.recipes import RECIPES

    t = cfg.train
    check_accel(cfg, resolve_device(cfg.model.device), packs_rows(cfg, RECIPES[cfg.stage]))
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


def load_inputs(cfg: StageConfig, recipe):
    """Return ``(files, tokenizer, model)`` for a stage; data is read first so bad input fails fast."""
    from medtune.models.accel import attention_for
    from medtune.models.load import load_model, load_tokenizer, resolve_device

    files = read_stage_data(cfg, recipe)
    m = cfg.model
    path = _absolute_if_local(m.path)
    tokenizer = load_tokenizer(path, m.template, m.trust_remote_code)
    attn = attention_for(m.attn_implementation, resolve_device(m.device), packs_rows(cfg, recipe))
    if hasattr(recipe, "load_model"):
        model = recipe.load_model(cfg, path)
        if attn:
            model.set_attn_implementation(attn)
    else:
        model = load_model(path, m.dtype, m.device, m.trust_remote_code,
                           quant_bits=cfg.adapter.bits if cfg.adapter.method == "qlora" else None,
                           merge_adapters=not cfg.adapter.incremental, attn_implementation=attn or "auto")
    model.config.use_cache = False  # packed rows need it; training never uses the KV cache
    return files, tokenizer, model


def read_stage_data(cfg: StageConfig, recipe):
    """Return the stage's data files, refusing a shape the recipe cannot train on."""
    from medtune.data.readers.files import read_files
    from medtune.data.readers.formats import SHAPES

    files = read_files(cfg.data.train, cfg.data.format)
    got = SHAPES[files[0].format]
    if got not in recipe.SHAPES:
        raise MedtuneError(f"{files[0].path}: stage {cfg.stage} needs {' or '.join(recipe.SHAPES)} data, "
                           f"got {got} (format {files[0].format})")
    return files


def _absolute_if_local(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).is_dir() else path


def build_rows(cfg: StageConfig, recipe, tokenizer, files):
    """Return ``(train, eval_or_None, stats)`` datasets: tokenized, split, packed as configured.

    The result is cached as Arrow files keyed by the data hashes, tokenizer and data settings,
    so a crashed or repeated run does not tokenize again.
    """
    from medtune.data.tokenize.examples import TokenStats

    key = cache_key(cfg, tokenizer, files)
    cached = load_cached_rows(key)
    if cached is not None:
        log.info("tokenized data loaded from cache %s", cache_dir() / key)
        return cached
    stats = TokenStats()
    train, evals = tokenize_rows(cfg, recipe, tokenizer, files, stats)
    for reason, count in stats.skipped.items():
        log.warning("skipped %d examples: %s", count, reason)
    if stats.truncated:
        log.warning("truncated %d examples to data.max_length=%d", stats.truncated, cfg.data.max_length)
    result = (_as_dataset(train), _as_dataset(evals) if evals is not None and len(evals) else None, stats)
    save_cached_rows(key, *result)
    if key:
        shutil.rmtree(cache_dir() / f"{key}.parts", ignore_errors=True)
        cached = load_cached_rows(key)  # memory-mapped from disk instead of held in memory
        if cached is not None:
            return cached[0], cached[1], stats
    return result


def tokenize_rows(cfg: StageConfig, recipe, tokenizer, files, stats):
    """Return ``(train, eval)`` examples: Arrow tables, or lists of dicts when packed.

    Each train example carries ``bucket``: the index of the file it came from (for curricula).
    Rows stay in Arrow (memory-mapped shards) unless packing needs them as Python lists.
    """
    import pyarrow as pa

    from medtune.data.tokenize.examples import TokenStats, pack_sequences

    records = [(i, r) for i, f in enumerate(files) for r in f.records]
    random.Random(cfg.train.seed).shuffle(records)
    n_eval = round(len(records) * cfg.data.eval_split)
    if cfg.data.eval_split and n_eval == 0:
        n_eval = 1
    make = ExampleMaker(recipe.__name__, cfg, tokenizer)
    key, tables = cache_key(cfg, tokenizer, files), []
    for bucket in range(len(files)):
        part = [r for i, r in records[n_eval:] if i == bucket]
        table = checkpointed_examples(key, f"train{bucket}", part, make, stats, cfg.data.workers)
        if table.num_rows:
            tables.append(table.append_column("bucket", pa.array([bucket] * table.num_rows, pa.int64())))
    if not tables:
        raise MedtuneError(f"no training examples left after tokenization (skipped: {stats.skipped})")
    train = pa.concat_tables(tables)
    order = list(range(train.num_rows))
    random.Random(cfg.train.seed).shuffle(order)  # the same order as shuffling the rows themselves
    train = train.take(order)
    evals = checkpointed_examples(key, "eval", [r for _, r in records[:n_eval]], make, TokenStats(),
                                  cfg.data.workers)
    evals = evals if evals.num_rows else None
    if packs_rows(cfg, recipe):
        train = pack_sequences(train.to_pylist(), cfg.data.max_length)
        evals = pack_sequences(evals.to_pylist(), cfg.data.max_length) if evals is not None else None
        stats.rows = len(train)
    return train, evals


def packs_rows(cfg: StageConfig, recipe) -> bool:
    """Return True when the stage trains packed rows (data.packing, or auto for pt-like recipes)."""
    return cfg.data.packing == "true" or (cfg.data.packing == "auto" and recipe.PACK_BY_DEFAULT
                                          and cfg.data.curriculum == "none")


SHARD_RECORDS = 20_000  # tokenization work lost to a crash is at most one shard


class ExampleMaker:
    """``recipe.make_examples(cfg, tokenizer, records, stats)`` as a picklable callable, so shards
    can be tokenized in worker processes (the recipe is re-imported there by name)."""

    def __init__(self, recipe_module: str, cfg: StageConfig, tokenizer):
        self.recipe_module, self.cfg, self.tokenizer = recipe_module, cfg, tokenizer

    def __call__(self, records: list, stats) -> list[dict]:
        import importlib

        recipe = importlib.import_module(self.recipe_module)
        return recipe.make_examples(self.cfg, self.tokenizer, records, stats)

    def shard(self, job: tuple[Path, list]):
        """Tokenize one shard into its part directory; return its stats (rows stay on disk, so
        workers never send them back through a pipe)."""
        from medtune.data.tokenize.examples import TokenStats

        path, records = job
        stats = TokenStats()
        _save_part(path, self(records, stats), stats)
        return stats


def tokenize_workers(workers: int, shards: int) -> int:
    """Processes for ``shards`` pending shards: 1 under torchrun (every rank tokenizes) or for one
    shard (spawning costs seconds), else ``workers`` (0: one per core)."""
    from medtune.data.parallel import default_workers

    if shards <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    return min(default_workers(workers), shards)


def checkpointed_examples(key, name: str, records: list, make: ExampleMaker, stats,
                          workers: int = 1):
    """The examples of ``records`` as one Arrow table, tokenized shard by shard.

    Each finished shard is kept under the cache key (``cache_dir()/<key>.parts``), so a crashed
    run's next attempt loads finished shards instead of tokenizing them again (the parts go once
    the whole result is cached). Pending shards are tokenized by ``workers`` processes.
    """
    import pyarrow as pa

    from medtune.data.parallel import parallel_map

    if key is None:
        return pa.Table.from_pylist(make(records, stats))
    parts = cache_dir() / f"{key}.parts"
    shards = [records[i:i + SHARD_RECORDS] for i in range(0, len(records), SHARD_RECORDS)]
    jobs = [(parts / f"{name}-{n}", shard) for n, shard in enumerate(shards)]
    todo = [job for job in jobs if not (job[0] / "stats.json").is_file()]
    for _ in parallel_map(make.shard, todo, tokenize_workers(workers, len(todo))):
        pass  # each shard is on disk when its worker returns
    tables = []
    for path, _ in jobs:
        table, part_stats = _load_part(path)
        stats.merge(part_stats)
        if table.num_rows:
            tables.append(table)
    return pa.concat_tables(tables) if tables else pa.table({})


def _load_part(path: Path):
    """``(table, stats)`` of a finished shard (the table memory-mapped, not copied)."""
    import pyarrow as pa

    from medtune.data.tokenize.examples import TokenStats

    table = pa.ipc.open_file(pa.memory_map(str(path / "rows.arrow"))).read_all()
    stats = TokenStats()
    stats.merge_dict(json.loads((path / "stats.json").read_text(encoding="utf-8")))
    return table, stats


def _save_part(path: Path, rows: list[dict], stats) -> None:
    import pyarrow as pa

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    table = _compact(pa.Table.from_pylist(rows))
    with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    (tmp / "stats.json").write_text(json.dumps(dataclasses.asdict(stats)), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    try:
        tmp.rename(path)
    except OSError:  # another rank stored it first
        shutil.rmtree(tmp, ignore_errors=True)


def _compact(table):
    """``table`` with token-id lists stored as int32 (ids and -100 labels fit): half the memory."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) and pa.types.is_int64(f.type.value_type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.int32())))
    return table


def _as_dataset(rows):
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    table = pa.Table.from_pylist(rows) if isinstance(rows, list) else rows
    if "length" not in table.column_names:
        table = table.append_column("length", pc.list_value_length(table["input_ids"]).cast(pa.int64()))
    return Dataset(table)


def cache_dir() -> Path:
    """Return where tokenized datasets are cached (``$MEDTUNE_CACHE`` or ~/.cache/medtune)."""
    return Path(os.environ.get("MEDTUNE_CACHE") or Path.home() / ".cache" / "medtune") / "tokenized"


def cache_key(cfg: StageConfig, tokenizer, files) -> str | None:
    """Return a hash of everything tokenization depends on (None: tokenizer cannot be hashed)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    parts = {
        "version": 2, "stage": cfg.stage, "preference": dataclasses.asdict(cfg.preference), "seed": cfg.train.seed,
        "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k != "train"},
        "files": [(f.sha256, f.format) for f in files],
        "tokenizer": hashlib.sha256(backend.to_str().encode()).hexdigest(),
        "template": tokenizer.chat_template, "special": tokenizer.special_tokens_map,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached_rows(key):
    """Return ``(train, eval, stats)`` from the cache, or None."""
    from datasets import load_from_disk

    from medtune.data.tokenize.examples import TokenStats

    path = cache_dir() / key if key else None
    if path is None or not (path / "stats.json").is_file():
        return None
    stats = TokenStats(**json.loads((path / "stats.json").read_text(encoding="utf-8")))
    stats.from_cache = True
    evals = load_from_disk(str(path / "eval")) if (path / "eval").is_dir() else None
    return load_from_disk(str(path / "train")), evals, stats


def save_cached_rows(key, train, evals, stats) -> None:
    """Write tokenized datasets to the cache (atomically: a crash leaves no partial entry)."""
    if not key:
        return
    final = cache_dir() / key
    tmp = final.with_name(f".{key}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    train.save_to_disk(str(tmp / "train"))
    if evals is not None:
        evals.save_to_disk(str(tmp / "eval"))
    (tmp / "stats.json").write_text(json.dumps(dataclasses.asdict(stats)), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # another process (torchrun rank) stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)


def training_kwargs(cfg: StageConfig, model, has_eval: bool, quiet: bool) -> dict:
    """Return the ``TrainingArguments`` keywords every stage shares (TRL configs accept them too)."""
    import torch

    from medtune.models.accel import accel_kwargs

    t = cfg.train
    on_cpu = not next(model.parameters()).is_cuda
    curriculum = cfg.data.curriculum != "none"
    kwargs = dict(
        output_dir=str(Path(cfg.output) / CHECKPOINTS),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=t.weight_decay,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_grad_norm=t.max_grad_norm,
        train_sampling_strategy="group_by_length" if t.group_by_length and not curriculum else "random",
        activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy={0: "epoch", -1: "no"}.get(t.save_steps, "steps"),
        save_steps=max(t.save_steps, 1),
        save_total_limit=t.save_total_limit,
        eval_strategy="epoch" if has_eval else "no",
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=on_cpu,
        bf16=(not on_cpu) and torch.cuda.is_bf16_supported() and cfg.model.dtype in ("auto", "bfloat16"),
        report_to=[],
        disable_tqdm=quiet,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    if t.neftune_alpha:
        kwargs["neftune_noise_alpha"] = t.neftune_alpha
    if t.deepspeed:
        kwargs["deepspeed"] = t.deepspeed
    if t.fsdp:
        kwargs["fsdp"] = t.fsdp
    kwargs.update(accel_kwargs(cfg, model))
    return kwargs


def default_trainer(cfg: StageConfig, model, tokenizer, train_set, eval_set, kwargs: dict):
    """Return the guarded ``Trainer`` with medtune's collator (pt, sft)."""
    from transformers import TrainingArguments

    from medtune.data.tokenize.examples import Collator
    from medtune.models.accel import flattens_batches
    from medtune.recipes.trainer import MedtuneTrainer

    trainer = MedtuneTrainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=Collator(tokenizer.pad_token_id, flatten=flattens_batches(model)),
        processing_class=tokenizer,
    )
    return quiet_trainer(trainer, kwargs["disable_tqdm"])


def quiet_trainer(trainer, quiet: bool):
    """Return ``trainer`` without its log printer when quiet (no bar: it would print every log)."""
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def collect_metrics(trainer, train_out, has_eval: bool) -> dict:
    """Return the run's headline metrics: losses, steps, throughput."""
    m = dict(train_out.metrics)
    metrics = {
        "train_loss": round(float(train_out.training_loss), 6),
        "global_steps": trainer.state.global_step,
        "train_runtime_s": round(m.get("train_runtime", 0.0), 2),
        "world_size": trainer.args.world_size,
    }
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["first_logged_loss"] = losses[0]
        metrics["last_logged_loss"] = losses[-1]
    if has_eval:
        metrics["eval_loss"] = round(float(trainer.evaluate()["eval_loss"]), 6)
    return metrics


def save_outputs(model, tokenizer, out: Path) -> None:
    """Save HF-native weights (full model or PEFT adapter) and the tokenizer with its template."""
    base = getattr(model, "get_base_model", lambda: model)()
    base.config.use_cache = True  # turned off for training; inference wants it
    model.save_pretrained(out, safe_serialization=True)  # full models: generation_config.json too
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # resumable state is not needed once done


def library_versions() -> dict:
    """Return the versions of the libraries a run depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    names = ("medtune", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def write_lineage(cfg: StageConfig, out: Path, files, stats, metrics: dict, started: float) -> None:
    """Write ``lineage.json`` last: its presence marks a finished run."""
    lineage = {
        "stage": cfg.stage,
        "parent_model": cfg.model.path,
        "template": cfg.model.template,
        "data": [
            {"path": f.path, "format": f.format, "sha256": f.sha256, "records": f.n_records,
             "skipped": f.skipped}
            for f in files
        ],
        "tokenization": {
            "examples": stats.examples, "rows": stats.rows, "truncated": stats.truncated,
            "skipped": stats.skipped, "label_tokens": stats.real_tokens, "from_cache": stats.from_cache,
        },
        "chain": lineage_chain(cfg.model.path),
        "libraries": library_versions(),
        "metrics": metrics,
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = out / (LINEAGE + ".tmp")
    tmp.write_text(json.dumps(lineage, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out / LINEAGE)


def lineage_chain(parent: str) -> list[dict]:
    """Return the ancestry of a model dir, oldest first: each earlier medtune stage with its
    parent model and data hashes, back to the base model (a dir without a lineage, or a hub id)."""
    path = Path(parent) / LINEAGE
    if not path.is_file():
        return []
    lineage = json.loads(path.read_text(encoding="utf-8"))
    entry = {
        "stage": lineage.get("stage"), "output": str(Path(parent)), "parent_model": lineage.get("parent_model"),
        "data": [{"path": d["path"], "sha256": d["sha256"]} for d in lineage.get("data", [])],
    }
    return [*lineage.get("chain", []), entry]


def read_log_history(out: Path) -> list:
    """Return the trainer log history saved with a finished run (empty if none)."""
    path = Path(out) / "log_history.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
