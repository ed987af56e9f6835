"""RLOO: REINFORCE leave-one-out, each completion scored against the mean of the others in its group.

Example::

    medtune train rloo.yaml   # stage: rloo; the config shown in medtune.recipes.rl
    medtune train rloo.yaml rl.num_generations=2 rl.beta=0.05

Unlike GRPO, rl.beta > 0 subtracts the KL from the reward itself. Everything but the trainer
class is shared with grpo (see :mod:`medtune.recipes.rl`).
"""

from __future__ import annotations

from medtune.config.schema import changed
from medtune.errors import MedtuneError
from medtune.recipes.rl import RLRecipe


class RLOORecipe(RLRecipe):
    def trl_classes(self):
        """Return TRL's ``RLOOTrainer`` and ``RLOOConfig``."""
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer, RLOOConfig

    def check_config(self, cfg, src: str) -> None:
        """Refuse rl.loss_type (TRL's RLOO has one loss), then the checks of every RL stage."""
        if changed(cfg.rl, "loss_type"):
            raise MedtuneError(f"{src}: rl.loss_type applies to grpo only (rloo has one loss)")
        super().check_config(cfg, src)
