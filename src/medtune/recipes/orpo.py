"""ORPO: SFT on the chosen answer plus an odds-ratio penalty on the rejected one, no reference model.

Loss per pair: mean-token NLL of the chosen answer - λ log σ(log odds ratio), λ = ``preference.beta``
(default 0.1), odds from length-averaged answer log-probs (the ORPO paper, TRL's ORPOTrainer).

Example::

    medtune train orpo.yaml   # stage: orpo, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes import preference as pref

SHAPES = pref.PREFERENCE_SHAPES
PACK_BY_DEFAULT = False


make_examples = pref.make_pair_examples  # chosen and rejected answers, chat template


class ORPOTrainer(pref.PreferenceTrainer):
    """Pairs forwarded as one batch; the chosen half also gives the NLL term."""

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import log_odds_ratio, orpo_loss

        chosen, rejected = pref.average_logps(model, batch)
        loss = orpo_loss(chosen, rejected, self.beta).mean()
        metrics = pref.reward_metrics(self.beta * chosen.detach(), self.beta * rejected.detach())
        metrics["nll_loss"] = -chosen.detach().mean()
        metrics["log_odds_ratio"] = log_odds_ratio(chosen, rejected).detach().mean()
        return loss, metrics


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the ORPO trainer."""
    return pref.build_trainer(ORPOTrainer, cfg, model, tokenizer, train_set, eval_set, kwargs,
                              pref.PairCollator(tokenizer.pad_token_id))


def extra_metrics(cfg, trainer, eval_set):
    """Return the last logged reward accuracy, margin and chosen-answer NLL (train and eval)."""
    return pref.logged_metrics(trainer, ("rewards/accuracies", "rewards/margins", "nll_loss"))
