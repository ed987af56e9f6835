"""GRPO: group relative policy optimisation, each completion scored against its group's mean.

Example::

    medtune train grpo.yaml   # stage: grpo; the config shown in medtune.recipes.rl
    medtune train grpo.yaml reward_model=runs/rm 'rl.reward_functions=[no_repetition]' 'rl.reward_weights=[1, 0.5]'

Everything but the trainer class is shared with rloo (see :mod:`medtune.recipes.rl`).
"""

from __future__ import annotations

from medtune.recipes.rl import PACK_BY_DEFAULT, SHAPES, extra_metrics, load_model, make_examples  # noqa: F401


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the guarded TRL ``GRPOTrainer`` for this stage."""
    from trl import GRPOConfig, GRPOTrainer

    from medtune.recipes.rl import build_trainer

    return build_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs, GRPOTrainer, GRPOConfig)
