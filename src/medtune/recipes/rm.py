"""Reward model: a one-output sequence classifier trained so chosen answers outscore rejected ones.

Loss -log σ(r_c - r_r) (Bradley-Terry); the score is read at the last non-pad token. The output is
a Hugging Face ``AutoModelForSequenceClassification`` dir (full) or a LoRA adapter whose ``score``
head is saved with it. ``lineage.json`` reports the pairwise accuracy (share of pairs with
r_c > r_r) on the train and eval data.

Example::

    medtune train rm.yaml   # stage: rm, data.train: [src/medtune/assets/sample/preference.jsonl]
"""

from __future__ import annotations

from medtune.errors import MedtuneError
from medtune.recipes import preference as pref

SHAPES = pref.PREFERENCE_SHAPES
PACK_BY_DEFAULT = False


def make_examples(cfg, tokenizer, records, stats):
    """Return pair rows (chosen and rejected answers tokenized with the chat template)."""
    if cfg.data.train_on_prompt:
        raise MedtuneError("data.train_on_prompt does not apply to stage rm "
                           "(a reward model scores whole sequences)")
    if cfg.preference.beta:
        raise MedtuneError("preference.beta does not apply to stage rm (its loss has no temperature)")
    return pref.make_pair_examples(cfg, tokenizer, records, stats)


def load_model(cfg, path):
    """Return a ``num_labels=1`` sequence classifier with the backbone of the causal LM at ``path``.

    The score head is new (seeded by ``train.seed``); an adapter dir is merged into its base first.
    """
    import copy

    from transformers import AutoModelForSequenceClassification, set_seed

    from medtune.models import load

    m = cfg.model
    device = load.resolve_device(m.device)
    dtype = load.resolve_dtype(m.dtype, device)
    set_seed(cfg.train.seed)
    if load.is_adapter_dir(path):
        causal = load.load_model(path, m.dtype, device, m.trust_remote_code)
        config = copy.deepcopy(causal.config)
        config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype,
                                                                trust_remote_code=m.trust_remote_code)
        backbone = getattr(model, model.base_model_prefix)
        backbone.load_state_dict(getattr(causal, causal.base_model_prefix).state_dict())
        return model.to(device)
    extra = {}
    if cfg.adapter.method == "qlora":
        extra = {"quantization_config": load.quantization_config(cfg.adapter.bits, device, dtype),
                 "device_map": {"": device}}
    load.check_model_path(path)
    model = load._from_pretrained(AutoModelForSequenceClassification, path, num_labels=1, dtype=dtype,
                                  trust_remote_code=m.trust_remote_code, use_safetensors=True, **extra)
    return model if extra else model.to(device)


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
