"""The trainer every stage runs on: a transformers (or TRL) trainer plus medtune's guards.

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

import logging
import shutil
from pathlib import Path

from medtune.errors import MedtuneError

COMPLETE = "medtune-complete"
log = logging.getLogger("medtune")


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


def _complete_checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / COMPLETE).is_file()), key=lambda p: int(p.name.split("-")[-1]))


def last_checkpoint(checkpoints_dir: Path) -> str | None:
    """Return the newest complete checkpoint under ``checkpoints_dir`` (None if there is none)."""
    done = _complete_checkpoints(Path(checkpoints_dir)) if Path(checkpoints_dir).is_dir() else []
    return str(done[-1]) if done else None


def drop_partial_checkpoints(checkpoints_dir: Path) -> list[str]:
    """Delete checkpoints a crash left without their completion marker; return their names."""
    dropped = []
    for p in Path(checkpoints_dir).glob("checkpoint-*"):
        if p.is_dir() and not (p / COMPLETE).is_file():
            shutil.rmtree(p, ignore_errors=True)
            dropped.append(p.name)
    for name in dropped:
        log.warning("removed incomplete checkpoint %s (the run was killed while saving it)", name)
    return dropped


_TRAINER = []


def __getattr__(name):
    # ``MedtuneTrainer`` is built on first use: importing transformers at import time slows the CLI.
    if name == "MedtuneTrainer":
        if not _TRAINER:
            from transformers import Trainer

            _TRAINER.append(guarded(Trainer))
        return _TRAINER[0]
    raise AttributeError(name)
