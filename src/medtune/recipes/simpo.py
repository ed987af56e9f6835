"""SimPO: a reference-free margin between length-averaged log-probs of chosen and rejected answers.

Loss -log σ(β (avg_c - avg_r) - γ), β = ``preference.beta`` (default 2.0), γ = ``preference.simpo_gamma``.

Example::

    medtune train simpo.yaml   # stage: simpo, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes.preference import PreferenceRecipe


class SimPORecipe(PreferenceRecipe):
    """Pairs forwarded as one batch; no reference model; γ is the target margin."""

    options = ("beta", "simpo_gamma")

    def trainer_class(self):
        from medtune.recipes.preference_trainer import SimPOTrainer

        return SimPOTrainer

    def trainer_options(self, cfg) -> dict:
        return {"gamma": cfg.preference.simpo_gamma}
