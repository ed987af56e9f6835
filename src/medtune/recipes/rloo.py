"""RLOO: REINFORCE leave-one-out, each completion scored against the mean of the others in its group.

Example::

    medtune train rloo.yaml   # stage: rloo; the config shown in medtune.recipes.rl
    medtune train rloo.yaml rl.num_generations=2 rl.beta=0.05

Unlike GRPO, rl.beta > 0 subtracts the KL from the reward itself. Everything but the trainer
class is shared with grpo (see :mod:`medtune.recipes.rl`).
"""

from __future__ import annotations

from medtune.recipes.rl import PACK_BY_DEFAULT, SHAPES, extra_metrics, load_model, make_examples  # noqa: F401


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the guarded TRL ``RLOOTrainer`` for this stage."""
    from trl import RLOOConfig, RLOOTrainer

    from medtune.recipes.rl import build_trainer

    return build_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs, RLOOTrainer, RLOOConfig)
