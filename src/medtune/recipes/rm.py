"""Reward model: a one-output sequence classifier trained so chosen answers outscore rejected ones.

Loss -log σ(r_c - r_r) (Bradley-Terry); the score is read at the last non-pad token. The output is
a Hugging Face ``AutoModelForSequenceClassification`` dir (full) or a LoRA adapter whose ``score``
head is saved with it. ``lineage.json`` reports the pairwise accuracy (share of pairs with
r_c > r_r) on the train and eval data.

Example::

    medtune train rm.yaml   # stage: rm, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes.preference import PreferenceRecipe


class RMRecipe(PreferenceRecipe):
    """Pairs scored by a classifier head; no beta (the pairwise loss has no temperature)."""

    options = ()

    def load_model(self, cfg, path):
        """Return a ``num_labels=1`` sequence classifier with the backbone of the causal LM at ``path``.

        The score head is new (seeded by ``train.seed``); an adapter dir is merged into its base first.
        """
        from transformers import set_seed

        from medtune.models.load import load_classifier

        m = cfg.model
        set_seed(cfg.train.seed)
        bits = cfg.adapter.bits if cfg.adapter.method == "qlora" else None
        return load_classifier(path, m.dtype, m.device, m.trust_remote_code, quant_bits=bits)

    def trainer_class(self):
        from medtune.recipes.preference_trainer import RewardTrainer

        return RewardTrainer

    def make_trainer(self, cfg, model, tokenizer, train_set, eval_set, kwargs):
        """Return the reward trainer; the model scores the last token that is not ``pad_token_id``."""
        from medtune.recipes.preference_trainer import is_peft

        base = model.get_base_model() if is_peft(model) else model
        base.config.pad_token_id = tokenizer.pad_token_id
        return super().make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs)

    def extra_metrics(self, cfg, trainer, eval_set):
        """Return the pairwise accuracy of the trained reward model on train (and eval) pairs."""
        found = {"train_pairwise_accuracy": pairwise_accuracy(trainer, trainer.train_dataset)}
        if eval_set is not None:
            found["eval_pairwise_accuracy"] = pairwise_accuracy(trainer, eval_set)
        return found


def pairwise_accuracy(trainer, dataset) -> float:
    """Return the share of pairs in ``dataset`` whose chosen answer outscores the rejected one."""
    import torch

    from medtune.recipes.preference_trainer import eval_mode, pair_scores

    wins = []
    with torch.no_grad(), eval_mode(trainer.model):
        for batch in trainer.ordered_batches(dataset):
            chosen, rejected = pair_scores(trainer.model, batch)
            wins += (chosen > rejected).tolist()
    return round(sum(wins) / len(wins), 4)
