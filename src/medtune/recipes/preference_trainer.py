"""The preference trainers (rm, dpo, orpo, simpo, kto): the guarded ``Trainer`` that forwards
chosen and rejected answers as one batch, the reference model (precomputed log-probs or a live
no-grad forward), and one ``batch_loss`` per stage.

Imported when a preference stage builds its trainer (the recipes stay importable without torch).
Example::

    from medtune.recipes.preference_trainer import DPOTrainer
    trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, data_collator=collate, beta=0.1,
                         loss="sigmoid", label_smoothing=0.0, reference="precomputed", incremental=False)
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
from transformers import Trainer

from medtune.errors import MedtuneError
from medtune.recipes.losses import sequence_logps
from medtune.recipes.trainer import guarded


def is_peft(model) -> bool:
    """Return True for a PEFT-wrapped model (its adapters can be switched off)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextmanager
def eval_mode(model):
    """Run the block with ``model`` in eval mode (no dropout), restoring its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def forward_logps(model, input_ids, attention_mask, labels):
    """Return ``(summed log-probs, token count)`` of each row's labelled tokens under ``model``."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return sequence_logps(logits, labels)


def average_logps(model, batch):
    """Return ``(chosen, rejected)`` length-averaged answer log-probs of a pair batch (orpo, simpo)."""
    logps, tokens = forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return (logps / tokens.clamp(min=1)).chunk(2)


def reward_metrics(chosen, rejected) -> dict:
    """Return the logged reward statistics of a batch of pairs (detached rewards)."""
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean()}


# --------------------------------------------------------------------------------------------
# trainers


class PreferenceTrainer(guarded(Trainer)):
    """The guarded ``Trainer`` for preference stages; a stage defines ``batch_loss``.

    Losses are per-pair means, so the Trainer's division by the accumulation steps is exactly
    right: ``num_items_in_batch`` (a token count meant for LM losses) is switched off.
    """

    def __init__(self, *args, beta: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def batch_loss(self, model, batch):
        """Return ``(loss, metrics)`` of one batch; metrics are scalar tensors to log."""
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.batch_loss(model, inputs)
        mode = "train" if model.training else "eval"
        for name, value in metrics.items():
            self._metrics[mode][name].append(float(value))
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs, start_time=None):
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + k: round(sum(v) / len(v), 6) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def ordered_batches(self, dataset):
        """Yield device batches of ``dataset`` in order (eval batch size, the trainer's collator)."""
        from torch.utils.data import DataLoader

        size = self.args.per_device_eval_batch_size
        for batch in DataLoader(dataset, batch_size=size, collate_fn=self.data_collator):
            yield self._prepare_inputs(batch)


class ReferenceMixin:
    """Log-probs of the starting model for dpo and kto.

    ``precomputed``: one no-grad pass over train and eval data before training, stored as ``ref_*``
    columns (no reference model in memory). ``live``: every step, the PEFT model with its adapter
    switched off, or a frozen copy of the initial weights for full / freeze fine-tuning.
    """

    reference_names: tuple[str, str]  # the ref_* columns of a batch's first and second half

    def reference_batch(self, batch) -> dict:
        """Return the ``ref_*`` tensors of one batch: starting-model log-probs of each half."""
        logps, _ = self.starting_logps(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return dict(zip(self.reference_names, logps.chunk(2)))

    def setup_reference(self, reference: str, incremental: bool) -> None:
        self.ref_model = None
        self.precomputed = reference == "precomputed"
        self.adapter_off = is_peft(self.model) and not incremental  # a new adapter is not part of the start
        if self.precomputed:
            self.train_dataset = self.with_reference(self.train_dataset)
            if self.eval_dataset is not None:
                self.eval_dataset = self.with_reference(self.eval_dataset)
        elif not is_peft(self.model):
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        elif incremental:
            raise MedtuneError("preference.reference: live switches the adapter off to get the starting model, "
                               "but an incremental adapter is part of it; use reference: precomputed")

    def with_reference(self, dataset):
        """Return ``dataset`` with the reference columns, computed once before training."""
        columns = defaultdict(list)
        for batch in self.ordered_batches(dataset):
            for name, values in self.reference_batch(batch).items():
                columns[name] += values.float().cpu().tolist()
        for name, values in columns.items():
            dataset = dataset.add_column(name, values)
        return dataset

    def starting_logps(self, input_ids, attention_mask, labels):
        """Return ``(summed log-probs, token count)`` per row under the starting model, no gradients.

        The starting model is the frozen copy (live, full / freeze), the PEFT model with its new
        adapter switched off, or the model as loaded (precomputed, or an incremental adapter).
        """
        model = self.ref_model if self.ref_model is not None else self.model
        off = self.ref_model is None and self.adapter_off
        with torch.no_grad(), eval_mode(model), (model.disable_adapter() if off else nullcontext()):
            return forward_logps(model, input_ids, attention_mask, labels)


# --------------------------------------------------------------------------------------------
# one per stage


def pair_scores(model, batch):
    """Return ``(chosen, rejected)`` scores of a pair batch, in fp32."""
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    return scores.float().chunk(2)


class RewardTrainer(PreferenceTrainer):
    """Pairs scored as one batch; logs pairwise accuracy and the mean score margin."""

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import pairwise_reward_loss

        chosen, rejected = pair_scores(model, batch)
        metrics = {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).detach().mean()}
        return pairwise_reward_loss(chosen, rejected).mean(), metrics


class DPOTrainer(ReferenceMixin, PreferenceTrainer):
    """Pairs forwarded as one batch; reference log-probs from the batch or a no-grad forward."""

    reference_names = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, *args, loss: str, label_smoothing: float, reference: str, incremental: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_kind, self.label_smoothing = loss, label_smoothing
        self.setup_reference(reference, incremental)

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import dpo_loss

        logps, tokens = forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        ref = batch if self.precomputed else self.reference_batch(batch)
        (chosen, rejected), (n_chosen, n_rejected) = logps.chunk(2), tokens.chunk(2)
        ref_chosen, ref_rejected = ref["ref_chosen_logps"], ref["ref_rejected_logps"]
        losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_kind,
                          self.label_smoothing, n_chosen, n_rejected)
        rewards = self.beta * (chosen - ref_chosen).detach(), self.beta * (rejected - ref_rejected).detach()
        return losses.mean(), reward_metrics(*rewards)


class ORPOTrainer(PreferenceTrainer):
    """Pairs forwarded as one batch; the chosen half also gives the NLL term."""

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import log_odds_ratio, orpo_loss

        chosen, rejected = average_logps(model, batch)
        loss = orpo_loss(chosen, rejected, self.beta).mean()
        metrics = reward_metrics(self.beta * chosen.detach(), self.beta * rejected.detach())
        metrics["nll_loss"] = -chosen.detach().mean()
        metrics["log_odds_ratio"] = log_odds_ratio(chosen, rejected).detach().mean()
        return loss, metrics


class SimPOTrainer(PreferenceTrainer):
    """Pairs forwarded as one batch; no reference model."""

    def __init__(self, *args, gamma: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = gamma

    def batch_loss(self, model, batch):
        from medtune.recipes.losses import simpo_loss

        chosen, rejected = average_logps(model, batch)
        loss = simpo_loss(chosen, rejected, self.beta, self.gamma).mean()
        return loss, reward_metrics(self.beta * chosen.detach(), self.beta * rejected.detach())


class KTOTrainer(ReferenceMixin, PreferenceTrainer):
    """Examples forwarded with gradients, their mismatched pairs without; reference as in DPO."""

    reference_names = ("ref_logps", "ref_kl_logps")

    def __init__(self, *args, reference: str, incremental: bool, desirable_weight: float,
                 undesirable_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.weights = desirable_weight, undesirable_weight
        self.setup_reference(reference, incremental)

    def batch_loss(self, model, batch):
        import torch

        from medtune.recipes.losses import kto_kl, kto_loss

        n = len(batch["desirable"])
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        logps, _ = forward_logps(model, ids[:n], mask[:n], labels[:n])
        with torch.no_grad():
            kl_logps, _ = forward_logps(model, ids[n:], mask[n:], labels[n:])
        ref = batch if self.precomputed else self.reference_batch(batch)
        kl = kto_kl(kl_logps, ref["ref_kl_logps"])
        good = batch["desirable"]
        losses = kto_loss(logps, ref["ref_logps"], good, kl, self.beta, *self.weights)
        rewards = self.beta * (logps - ref["ref_logps"]).detach()
        metrics = {"kl": kl}
        if good.any():
            metrics["rewards/chosen"] = rewards[good].mean()
        if (~good).any():
            metrics["rewards/rejected"] = rewards[~good].mean()
        return losses.mean(), metrics
