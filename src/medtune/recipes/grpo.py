"""GRPO: group relative policy optimisation, each completion scored against its group's mean.

Example::

    medtune train grpo.yaml   # stage: grpo; the config shown in medtune.recipes.rl
    medtune train grpo.yaml reward_model=runs/rm 'rl.reward_functions=[no_repetition]' 'rl.reward_weights=[1, 0.5]'
    medtune train grpo.yaml 'rl.reward_functions=[answer_match]' rl.loss_type=dr_grpo

``rl.loss_type`` picks how TRL sums the token losses: grpo (per sequence, then mean: favours short
right answers), dr_grpo (a constant, max_new_tokens), dapo (the tokens of the accumulated batch;
TRL's default), bnpo (the tokens of the local batch).

Everything but the trainer class is shared with rloo (see :mod:`medtune.recipes.rl`).
"""

from __future__ import annotations

from medtune.recipes.rl import RLRecipe


class GRPORecipe(RLRecipe):
    def trl_classes(self):
        """Return TRL's ``GRPOTrainer`` and ``GRPOConfig``."""
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig

    def algorithm_args(self, cfg) -> dict:
        return {"loss_type": cfg.rl.loss_type}
