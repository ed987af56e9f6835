"""ORPO: SFT on the chosen answer plus an odds-ratio penalty on the rejected one, no reference model.

Loss per pair: mean-token NLL of the chosen answer - λ log σ(log odds ratio), λ = ``preference.beta``
(default 0.1), odds from length-averaged answer log-probs (the ORPO paper, TRL's ORPOTrainer).

Example::

    medtune train orpo.yaml   # stage: orpo, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes.preference import PreferenceRecipe


class ORPORecipe(PreferenceRecipe):
    """Pairs forwarded as one batch; the chosen half also gives the NLL term (logged as nll_loss)."""

    logged = ("rewards/accuracies", "rewards/margins", "nll_loss")

    def trainer_class(self):
        from medtune.recipes.preference_trainer import ORPOTrainer

        return ORPOTrainer
