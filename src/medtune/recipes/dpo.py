"""DPO: prefer the chosen answer over the rejected one relative to the starting model.

Losses ``preference.loss``: sigmoid (DPO; ``label_smoothing`` gives conservative DPO), ipo, hinge.
The reference is precomputed before training (no second model in memory) or run live.

Example::

    medtune train dpo.yaml   # stage: dpo, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes import preference as pref

SHAPES = pref.PREFERENCE_SHAPES
PACK_BY_DEFAULT = False


make_examples = pref.make_pair_examples  # chosen and rejected answers, chat template (label_smoothing
# is range-checked by schema.check_stage)


class DPOTrainer(pref.ReferenceMixin, pref.PreferenceTrainer):
    """Pairs forwarded as one batch; reference log-probs from the batch or a no-grad forward."""

    def __init__(self, *args, loss: str, label_smoothing: float, reference: str, incremental: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_kind, self.label_smoothing = loss, label_smoothing
        self.setup_reference(reference, incremental)

    def reference_batch(self, batch):
        logps, _ = self.starting_logps(batch["input_ids"], batch["attention_mask"], batch["labels"])
        chosen, rejected = logps.chunk(2)
        return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import dpo_loss

        logps, tokens = pref.forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        ref = batch if self.precomputed else self.reference_batch(batch)
        (chosen, rejected), (n_chosen, n_rejected) = logps.chunk(2), tokens.chunk(2)
        ref_chosen, ref_rejected = ref["ref_chosen_logps"], ref["ref_rejected_logps"]
        losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_kind,
                          self.label_smoothing, n_chosen, n_rejected)
        rewards = self.beta * (chosen - ref_chosen).detach(), self.beta * (rejected - ref_rejected).detach()
        return losses.mean(), pref.reward_metrics(*rewards)


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the DPO trainer (reference log-probs precomputed here when so configured)."""
    p = cfg.preference
    return pref.build_trainer(DPOTrainer, cfg, model, tokenizer, train_set, eval_set, kwargs,
                              pref.PairCollator(tokenizer.pad_token_id), loss=p.loss,
                              label_smoothing=p.label_smoothing, reference=p.reference,
                              incremental=cfg.adapter.incremental)


def extra_metrics(cfg, trainer, eval_set):
    """Return the last logged reward accuracy and margin (train and eval)."""
    return pref.logged_metrics(trainer)
