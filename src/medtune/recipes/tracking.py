"""Experiment tracking of a stage: where its logs go (``train.report_to``), the tokens/s it logs,
and the loss-curve PNG each output dir keeps.

Every training log (loss, learning_rate, grad_norm, tokens_per_second and the stage's own metrics,
e.g. ``rewards/margins`` for the preference stages) reaches each tracker chosen:

- ``tensorboard``: event files in ``<output>/tensorboard`` (``tensorboard --logdir runs/sft``),
  tags ``train/loss``, ``train/tokens_per_second``, ``eval/loss``, ...;
- ``wandb`` / ``mlflow``: transformers' own callbacks, configured by their environment variables
  (``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``, ...).

Example::

    from medtune.recipes.tracking import add_tracking, reporters
    kwargs["report_to"] = reporters(cfg)          # wandb / mlflow for TrainingArguments
    add_tracking(trainer, cfg)                    # tokens/s + tensorboard in <output>/tensorboard
"""

from __future__ import annotations

import time
from pathlib import Path

from medtune.config import StageConfig
from medtune.recipes.run_dir import LOSS_PLOT, TENSORBOARD

# Trackers transformers' Trainer runs itself (report_to); tensorboard is added by medtune, whose
# event files must land in the output dir rather than under the checkpoints (removed at the end).
_HF_REPORTERS = ("wandb", "mlflow")


def reporters(cfg: StageConfig) -> list[str]:
    """Return the ``report_to`` list for ``TrainingArguments`` (the trackers transformers runs)."""
    return [name for name in cfg.train.report_to if name in _HF_REPORTERS]


def add_tracking(trainer, cfg: StageConfig) -> None:
    """Give ``trainer`` the tokens/s meter (first, so every tracker sees its figure) and, when
    chosen, a TensorBoard writer into ``<output>/tensorboard``."""
    trainer.callback_handler.callbacks.insert(0, token_rate_callback())
    if "tensorboard" in cfg.train.report_to:
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(Path(cfg.output) / TENSORBOARD)  # instead of <output_dir>/runs/<date>
        trainer.add_callback(board)


def token_rate_callback():
    """Return a ``TrainerCallback`` adding ``tokens_per_second`` to every training log.

    It counts the tokens of each forward pass that trains (the model in train mode with gradients
    on: reference, generation and eval passes are left out), non-padding ones by the attention
    mask when the batch has one (packed rows: every token), over the window since the last log.
    Built on call: transformers is imported only when a stage trains.
    """
    from transformers import TrainerCallback

    class _TokenRate(TrainerCallback):
        def __init__(self):
            self.tokens, self.since, self.handle = 0, None, None

        def _count(self, module, args, kwargs):
            import torch

            if not (module.training and torch.is_grad_enabled()):
                return
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            if mask is not None and mask.dim() == 2:
                self.tokens = self.tokens + mask.sum()  # a device tensor: no sync per step
            elif ids is not None:
                self.tokens = self.tokens + ids.numel()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
            self.tokens, self.since = 0, time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.since is None or logs is None or "loss" not in logs:
                return
            now = time.perf_counter()
            rate = round(int(self.tokens) / max(now - self.since, 1e-9), 2)
            self.tokens, self.since = 0, now
            logs["tokens_per_second"] = rate
            last = state.log_history[-1] if state.log_history else {}
            if last.get("step") == state.global_step and "loss" in last:
                last["tokens_per_second"] = rate  # the Trainer copied logs into the history already

        def on_train_end(self, args, state, control, **kwargs):
            if self.handle is not None:
                self.handle.remove()
            self.handle, self.since = None, None

    return _TokenRate()


def save_loss_plot(out: Path, stage: str, history: list) -> Path | None:
    """Write ``<out>/loss.png`` (train loss per logged step, eval loss points); return its path,
    or None when nothing was logged."""
    from medtune.evaluation.plots import plot_losses

    if not any("loss" in h for h in history):
        return None
    path = Path(out) / LOSS_PLOT
    plot_losses({stage: history}, path)
    return path
