"""SimPO: a reference-free margin between length-averaged log-probs of chosen and rejected answers.

Loss -log σ(β (avg_c - avg_r) - γ), β = ``preference.beta`` (default 2.0), γ = ``preference.simpo_gamma``.

Example::

    medtune train simpo.yaml   # stage: simpo, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes import preference as pref

SHAPES = pref.PREFERENCE_SHAPES
PACK_BY_DEFAULT = False


make_examples = pref.make_pair_examples  # chosen and rejected answers, chat template


class SimPOTrainer(pref.PreferenceTrainer):
    """Pairs forwarded as one batch; no reference model."""

    def __init__(self, *args, gamma: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = gamma

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import simpo_loss

        chosen, rejected = pref.average_logps(model, batch)
        loss = simpo_loss(chosen, rejected, self.beta, self.gamma).mean()
        return loss, pref.reward_metrics(self.beta * chosen.detach(), self.beta * rejected.detach())


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the SimPO trainer."""
    return pref.build_trainer(SimPOTrainer, cfg, model, tokenizer, train_set, eval_set, kwargs,
                              pref.PairCollator(tokenizer.pad_token_id), gamma=cfg.preference.simpo_gamma)


def extra_metrics(cfg, trainer, eval_set):
    """Return the last logged reward accuracy and margin (train and eval)."""
    return pref.logged_metrics(trainer)
