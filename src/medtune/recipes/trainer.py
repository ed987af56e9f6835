"""The trainer every stage runs on: a transformers (or TRL) trainer plus medtune's guards, the
``TrainingArguments`` every stage shares, its headline metrics and the saved outputs.

Guards, added to any trainer class by :func:`guarded`:

- a NaN / inf loss stops the run at once, before the optimizer step and before any checkpoint,
  with a message naming the step and the last good checkpoint;
- every finished checkpoint gets a ``medtune-complete`` marker written after all its files, so a
  crash mid-save never leaves a half checkpoint that resume would pick up;
- the training order is a function of the global batch only (not of the number of processes), so
  ``torchrun --nproc_per_node 2`` at batch 2 sees the same global batches as one process at 4;
  a curriculum keeps the dataset's order (sorted easy -> hard beforehand).

Example::

    from medtune.recipes.trainer import MedtuneTrainer
    trainer = MedtuneTrainer(model=model, args=args, train_dataset=rows, data_collator=collate)
"""

from __future__ import annotations

from pathlib import Path

from medtune.config import StageConfig
from medtune.errors import MedtuneError
from medtune.recipes.run_dir import CHECKPOINTS, COMPLETE, last_checkpoint


class NonFiniteLoss(MedtuneError):
    """The loss became NaN or inf; training stopped before the bad update was applied."""


class GuardMixin:
    """Mixin for any ``transformers.Trainer`` subclass: NaN stop and checkpoint markers."""

    curriculum: bool = False  # read by OrderMixin; set on every trainer so run_stage need not ask

    def training_step(self, model, inputs, num_items_in_batch=None):
        import torch

        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            good = last_checkpoint(Path(self.args.output_dir))
            kept = f"the last good checkpoint {good} is kept" if good else "no checkpoint was saved yet"
            raise NonFiniteLoss(
                f"loss became {loss.item()} at step {step}; training stopped before the update ({kept}). "
                "Lower train.learning_rate or check the data for empty or corrupt samples"
            )
        return loss

    def _run_epoch(self, *args, **kwargs):
        # Resumed from the final checkpoint of a partial last epoch, transformers would train one
        # step more than asked before it checks max_steps: there is nothing left to train.
        if self.state.global_step >= self.state.max_steps > 0:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            (folder / COMPLETE).write_text("ok\n", encoding="utf-8")



class OrderMixin:
    """Training order that depends on the global batch only, or the dataset's own (curriculum)."""

    def _get_train_sampler(self, train_dataset=None):
        from torch.utils.data import SequentialSampler

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.curriculum:
            return SequentialSampler(dataset)
        a = self.args
        lengths = None
        if a.train_sampling_strategy == "group_by_length" and "length" in dataset.column_names:
            lengths = list(dataset["length"])
        global_batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * max(1, a.world_size)
        return EpochSampler(len(dataset), a.data_seed or a.seed, lengths, global_batch)


class EpochSampler:
    """A shuffled order that is a pure function of (seed, epoch).

    Resumed runs draw the same order as uninterrupted ones (the trainer calls ``set_epoch``), and
    every process of a distributed run draws the same global order, so one process at batch 4 and
    two at batch 2 train on the same global batches. With ``lengths``, samples of similar length
    are grouped into mega-batches of the global batch (less padding).
    """

    def __init__(self, n: int, seed: int, lengths=None, global_batch: int = 1):
        self.n, self.seed, self.lengths, self.global_batch = n, seed, lengths, global_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.lengths is not None:
            return iter(get_length_grouped_indices(self.lengths, self.global_batch, generator=generator))
        return iter(torch.randperm(self.n, generator=generator).tolist())


def guarded(trainer_cls, order: bool = True):
    """Return ``trainer_cls`` with medtune's guards mixed in (works for TRL trainers too).

    ``order=False`` keeps the trainer's own sampler (TRL's GRPO/RLOO repeat each prompt per group).
    """
    bases = (GuardMixin, OrderMixin, trainer_cls) if order else (GuardMixin, trainer_cls)
    return type(f"Medtune{trainer_cls.__name__}", bases, {})


def training_kwargs(cfg: StageConfig, model, has_eval: bool, quiet: bool) -> dict:
    """Return the ``TrainingArguments`` keywords every stage shares (TRL configs accept them too)."""
    import torch

    from medtune.models.accel import accel_kwargs
    from medtune.recipes.tracking import reporters

    t = cfg.train
    on_cpu = not next(model.parameters()).is_cuda
    curriculum = cfg.data.curriculum != "none" or cfg.data.mixture != "none"
    kwargs = dict(
        output_dir=str(Path(cfg.output) / CHECKPOINTS),
        # a data.mixture's rows already hold every sample of the run (recipes.mixture): one pass
        num_train_epochs=1 if cfg.data.mixture != "none" else t.epochs,
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
        report_to=reporters(cfg),  # wandb / mlflow; tensorboard: recipes.tracking.add_tracking
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


def quiet_trainer(trainer, quiet: bool):
    """Return ``trainer`` without its log printer when quiet (no bar: it would print every log)."""
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def collect_metrics(trainer, train_out, has_eval: bool) -> dict:
    """Return the run's headline metrics: losses, steps, throughput."""
    m = dict(train_out.metrics)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    loss = train_out.training_loss
    if trainer.state.global_step == getattr(trainer, "_initial_global_step", -1) and losses:
        loss = sum(losses) / len(losses)  # resumed from the final checkpoint: no step ran, the logged mean
    metrics = {
        "train_loss": round(float(loss), 6),
        "global_steps": trainer.state.global_step,
        "train_runtime_s": round(m.get("train_runtime", 0.0), 2),
        "world_size": trainer.args.world_size,
    }
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
    tokenizer.save_pretrained(out)  # the checkpoints stay until the lineage is pending (run_dir)


_TRAINER = []


def __getattr__(name):
    # ``MedtuneTrainer`` is built on first use: importing transformers at import time slows the CLI.
    if name == "MedtuneTrainer":
        if not _TRAINER:
            from transformers import Trainer

            _TRAINER.append(guarded(Trainer))
        return _TRAINER[0]
    raise AttributeError(name)
