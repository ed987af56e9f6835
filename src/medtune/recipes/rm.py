"""Reward model: a one-output sequence classifier trained so chosen answers outscore rejected ones.

Loss -log σ(r_c - r_r) (Bradley-Terry); the score is read at the last non-pad token. The output is
a Hugging Face ``AutoModelForSequenceClassification`` dir (full) or a LoRA adapter whose ``score``
head is saved with it. ``lineage.json`` reports the pairwise accuracy (share of pairs with
r_c > r_r) on the train and eval data.

Example::

    medtune train rm.yaml   # stage: rm, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.recipes import preference as pref

SHAPES = pref.PREFERENCE_SHAPES
PACK_BY_DEFAULT = False


make_examples = pref.make_pair_examples  # chosen and rejected answers, chat template


def load_model(cfg, path):
    """Return a ``num_labels=1`` sequence classifier with the backbone of the causal LM at ``path``.

    The score head is new (seeded by ``train.seed``); an adapter dir is merged into its base first.
    """
    from transformers import set_seed

    from medtune.models.load import load_classifier

    m = cfg.model
    set_seed(cfg.train.seed)
    bits = cfg.adapter.bits if cfg.adapter.method == "qlora" else None
    return load_classifier(path, m.dtype, m.device, m.trust_remote_code, quant_bits=bits)


def pair_scores(model, batch):
    """Return ``(chosen, rejected)`` scores of a pair batch, in fp32."""
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    return scores.float().chunk(2)


class RewardTrainer(pref.PreferenceTrainer):
    """Pairs scored as one batch; logs pairwise accuracy and the mean score margin."""

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import pairwise_reward_loss

        chosen, rejected = pair_scores(model, batch)
        metrics = {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).detach().mean()}
        return pairwise_reward_loss(chosen, rejected).mean(), metrics


def make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs):
    """Return the reward trainer; the model scores the last token that is not ``pad_token_id``."""
    base = model.get_base_model() if pref.is_peft(model) else model
    base.config.pad_token_id = tokenizer.pad_token_id
    return pref.build_trainer(RewardTrainer, cfg, model, tokenizer, train_set, eval_set, kwargs,
                              pref.PairCollator(tokenizer.pad_token_id))


def pairwise_accuracy(trainer, dataset) -> float:
    """Return the share of pairs in ``dataset`` whose chosen answer outscores the rejected one."""
    import torch

    wins = []
    with torch.no_grad(), pref.eval_mode(trainer.model):
        for batch in trainer.ordered_batches(dataset):
            chosen, rejected = pair_scores(trainer.model, batch)
            wins += (chosen > rejected).tolist()
    return round(sum(wins) / len(wins), 4)


def extra_metrics(cfg, trainer, eval_set):
    """Return the pairwise accuracy of the trained reward model on train (and eval) pairs."""
    found = {"train_pairwise_accuracy": pairwise_accuracy(trainer, trainer.train_dataset)}
    if eval_set is not None:
        found["eval_pairwise_accuracy"] = pairwise_accuracy(trainer, eval_set)
    return found
