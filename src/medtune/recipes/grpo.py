"""GRPO: group relative policy optimisation, each completion scored against its group's mean.

Example::

    medtune train grpo.yaml   # stage: grpo; the config shown in medtune.recipes.rl
    medtune train grpo.yaml reward_model=runs/rm 'rl.reward_functions=[no_repetition]' 'rl.reward_weights=[1, 0.5]'

Everything but the trainer class is shared with rloo (see :mod:`medtune.recipes.rl`).
"""

from __future__ import annotations

from medtune.recipes.rl import RLRecipe


class GRPORecipe(RLRecipe):
    def trl_classes(self):
        """Return TRL's ``GRPOTrainer`` and ``GRPOConfig``."""
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig
