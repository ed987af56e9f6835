"""What the offline preference stages (rm, dpo, orpo, simpo, kto) share: tokenized answers, the
pair collator, the guarded trainer that forwards chosen and rejected answers as one batch, and
the reference model (precomputed log-probs or a live no-grad forward).

Example (any of the five stages)::

    medtune train dpo.yaml            # stage: dpo, data.train: [src/medtune/assets/sample/preference.jsonl]

or in Python::

    from medtune.config import stage_from_dict
    from medtune.recipes.run import run_stage
    cfg = stage_from_dict({"stage": "dpo", "model": {"path": "runs/tiny"}, "output": "runs/dpo",
                           "data": {"train": ["src/medtune/assets/sample/preference.jsonl"]}}, "dpo")
    run_stage(cfg).metrics["rewards_accuracies"]
"""

from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
from transformers import Trainer

from medtune.data.tokenize.examples import IGNORE, Collator, apply_template, encode_conversation
from medtune.errors import MedtuneError
from medtune.recipes.losses import sequence_logps
from medtune.recipes.trainer import guarded

PREFERENCE_SHAPES = ("preference",)
DEFAULT_BETA = {"dpo": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}


def stage_beta(cfg) -> float:
    """Return ``preference.beta``, or the stage's default when it is 0."""
    return cfg.preference.beta or DEFAULT_BETA[cfg.stage]


def check_data_options(cfg) -> None:
    """Refuse data options a preference stage cannot honour (checked before the output dir exists)."""
    if cfg.data.packing == "true":
        raise MedtuneError(f"data.packing: true does not apply to stage {cfg.stage} (chosen and rejected answers "
                           "are compared row by row); set it to auto or false")


# --------------------------------------------------------------------------------------------
# tokenization


def encode_answer(tokenizer, prompt: list[dict], answer: list[dict], data) -> tuple[list, list, str]:
    """Return ``(input_ids, labels, note)`` for ``prompt + answer`` rendered with the chat template.

    Labels cover the answer only (every token with ``data.train_on_prompt``). ``note`` is ``""``,
    ``"truncated"``, or the reason the example must be skipped (overlength, no answer token left).
    """
    ids, labels = encode_conversation(tokenizer, prompt + answer, data.train_on_prompt)
    if not data.train_on_prompt and any(m["role"] == "assistant" for m in prompt):
        labels = _mask_prompt(tokenizer, prompt, ids, labels)
    note = ""
    if len(ids) > data.max_length:
        if data.overlength == "skip":
            return ids, labels, "overlength"
        ids, labels, note = ids[: data.max_length], labels[: data.max_length], "truncated"
    if all(label == IGNORE for label in labels[1:]):
        return ids, labels, "no answer tokens within max_length"
    return ids, labels, note


def _mask_prompt(tokenizer, prompt, ids, labels) -> list:
    """Return ``labels`` with the prompt's own assistant turns masked (only the answer is learned)."""
    head = list(apply_template(tokenizer, prompt, add_generation_prompt=True)["input_ids"])
    if ids[: len(head)] != head:
        raise MedtuneError("the chat template renders a preference prompt differently on its own and followed by "
                           "an answer; set model.template to a built-in template")
    return [IGNORE] * len(head) + labels[len(head):]


def skip_reason(*notes: str) -> str:
    """Return the first note that means "skip this example" ("" when every part is usable)."""
    return next((n for n in notes if n not in ("", "truncated")), "")


def count_tokens(stats, rows, label_keys) -> None:
    """Add ``rows`` to the tokenization stats: examples, rows and learned tokens."""
    stats.examples += len(rows)
    stats.rows += len(rows)
    stats.real_tokens += sum(sum(1 for t in row[k][1:] if t != IGNORE) for row in rows for k in label_keys)


def make_pair_examples(cfg, tokenizer, records, stats) -> list[dict]:
    """Return pair rows ``{chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels, length}``.

    A pair is skipped (and counted) when either answer must be; ``length`` is the longer side.
    """
    check_data_options(cfg)
    rows = []
    for rec in records:
        c_ids, c_labels, c_note = encode_answer(tokenizer, rec["prompt"], rec["chosen"], cfg.data)
        r_ids, r_labels, r_note = encode_answer(tokenizer, rec["prompt"], rec["rejected"], cfg.data)
        reason = skip_reason(c_note, r_note)
        if reason:
            stats.skip(reason)
            continue
        stats.truncated += "truncated" in (c_note, r_note)
        rows.append({"chosen_input_ids": c_ids, "chosen_labels": c_labels, "rejected_input_ids": r_ids,
                     "rejected_labels": r_labels, "length": max(len(c_ids), len(r_ids))})
    count_tokens(stats, rows, ("chosen_labels", "rejected_labels"))
    return rows


class PairCollator:
    """Pad pairs into one batch: the chosen answers in rows ``[:B]``, the rejected in ``[B:]``.

    Right padding, labels -100 and an attention mask (medtune's ``Collator``); ``ref_*`` columns
    (precomputed reference log-probs) become float tensors.
    """

    def __init__(self, pad_token_id: int):
        self.pad = Collator(pad_token_id)

    def __call__(self, features):
        sides = [{"input_ids": f[f"{s}_input_ids"], "labels": f[f"{s}_labels"]}
                 for s in ("chosen", "rejected") for f in features]
        return {**self.pad(sides), **reference_columns(features)}


def reference_columns(features) -> dict:
    """Return the features' precomputed ``ref_*`` values as float tensors (empty when live)."""
    names = [k for k in features[0] if k.startswith("ref_")]
    return {k: torch.tensor([f[k] for f in features], dtype=torch.float32) for k in names}


# --------------------------------------------------------------------------------------------
# model helpers


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
# trainer


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

    def reference_batch(self, batch) -> dict:
        """Return the ``ref_*`` tensors of one batch (computed by ``starting_logps``)."""
        raise NotImplementedError

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


def build_trainer(trainer_cls, cfg, model, tokenizer, train_set, eval_set, kwargs, collator, **options):
    """Return ``trainer_cls`` set up with the shared TrainingArguments, the stage's beta and ``options``."""
    from transformers import TrainingArguments

    from medtune.recipes.run import quiet_trainer

    beta = stage_beta(cfg) if cfg.stage in DEFAULT_BETA else 0.0
    trainer = trainer_cls(model=model, args=TrainingArguments(**kwargs), train_dataset=train_set,
                          eval_dataset=eval_set, data_collator=collator, processing_class=tokenizer,
                          beta=beta, **options)
    return quiet_trainer(trainer, kwargs["disable_tqdm"])


def logged_metrics(trainer, names=("rewards/accuracies", "rewards/margins")) -> dict:
    """Return the last logged value of each metric in ``names`` (train, and eval when logged)."""
    found = {}
    for entry in trainer.state.log_history:
        for name in names:
            for key in (name, f"eval_{name}"):
                if key in entry:
                    found[key.replace("/", "_")] = entry[key]
    return found
