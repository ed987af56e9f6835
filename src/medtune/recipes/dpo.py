"""DPO: prefer the chosen answer over the rejected one relative to the starting model.

Losses ``preference.loss``: sigmoid (DPO; ``label_smoothing`` gives conservative DPO), ipo, hinge.
The reference is precomputed before training (no second model in memory) or run live. The loss
is ``DPOTrainer.batch_loss`` in :mod:`medtune.recipes.preference_trainer`.

Example::

    medtune train dpo.yaml   # stage: dpo, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.errors import MedtuneError
from medtune.recipes.preference import NOT_READ, PreferenceRecipe


class DPORecipe(PreferenceRecipe):
    """Pairs against the starting model's log-probs (reference precomputed here when so configured)."""

    options = ("beta", "loss", "label_smoothing", "reference")

    def check_config(self, cfg, src: str) -> None:
        super().check_config(cfg, src)
        if cfg.preference.label_smoothing and cfg.preference.loss != "sigmoid":
            raise MedtuneError(f"{src}: " + NOT_READ["label_smoothing"])

    def trainer_class(self):
        from medtune.recipes.preference_trainer import DPOTrainer

        return DPOTrainer

    def trainer_options(self, cfg) -> dict:
        p = cfg.preference
        return {"loss": p.loss, "label_smoothing": p.label_smoothing, "reference": p.reference,
                "incremental": cfg.adapter.incremental}
