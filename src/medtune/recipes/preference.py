"""What the offline preference stages (rm, dpo, orpo, simpo, kto) share: tokenized answers, the
pair collator, and ``PreferenceRecipe``, which builds a stage's trainer from
:mod:`medtune.recipes.preference_trainer` and checks which ``preference`` options it reads.

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

from medtune.config.schema import changed
from medtune.data.tokenize.examples import IGNORE, Collator, apply_template, encode_conversation
from medtune.errors import MedtuneError
from medtune.recipes.recipe import Recipe

# Why a preference option is refused by a stage that does not read it ({stage} is filled in).
NOT_READ = {
    "loss": "preference.loss selects a DPO loss; it does not apply to stage {stage}",
    "reference": "preference.reference applies to dpo and kto (stage {stage} has no reference model)",
    "label_smoothing": "preference.label_smoothing applies to dpo with loss sigmoid only",
    "desirable_weight": "preference.desirable_weight / undesirable_weight apply to kto only",
    "undesirable_weight": "preference.desirable_weight / undesirable_weight apply to kto only",
    "simpo_gamma": "preference.simpo_gamma applies to simpo only",
    "beta": "preference.beta does not apply to stage {stage} (the pairwise loss has no temperature)",
}


class PreferenceRecipe(Recipe):
    """A stage trained on pairs (or labelled answers) with a trainer from ``preference_trainer``."""

    options: tuple[str, ...] = ("beta",)  # the preference options this stage reads
    logged: tuple[str, ...] = ("rewards/accuracies", "rewards/margins")  # reported in the lineage

    def check_config(self, cfg, src: str) -> None:
        """Refuse preference options this stage would ignore, and a beta with no value (β = 0)."""
        for name, why in NOT_READ.items():
            if name not in self.options and changed(cfg.preference, name):
                raise MedtuneError(f"{src}: " + why.format(stage=cfg.stage))
        if "beta" in self.options and not cfg.preference.beta:
            try:
                self.spec.default("preference.beta")
            except MedtuneError as exc:
                raise MedtuneError(f"{src}: {exc}") from None

    def make_examples(self, cfg, tokenizer, records, stats):
        return make_pair_examples(cfg, tokenizer, records, stats)

    def trainer_class(self):
        """Return the stage's trainer class (a ``PreferenceTrainer``; imports torch)."""
        raise NotImplementedError

    def trainer_options(self, cfg) -> dict:
        """Return the keywords of the stage's trainer beyond the shared ones."""
        return {}

    def collator(self, tokenizer):
        return PairCollator(tokenizer.pad_token_id)

    def make_trainer(self, cfg, model, tokenizer, train_set, eval_set, kwargs):
        """Return the stage's trainer with the shared TrainingArguments, its beta and options."""
        from transformers import TrainingArguments

        from medtune.recipes.trainer import quiet_trainer

        beta = self.beta(cfg) if "beta" in self.options else 0.0
        trainer = self.trainer_class()(
            model=model, args=TrainingArguments(**kwargs), train_dataset=train_set, eval_dataset=eval_set,
            data_collator=self.collator(tokenizer), processing_class=tokenizer, beta=beta,
            **self.trainer_options(cfg))
        return quiet_trainer(trainer, kwargs["disable_tqdm"])

    def beta(self, cfg) -> float:
        """Return ``preference.beta``, or the stage's default when it is 0."""
        return cfg.preference.beta or self.spec.default("preference.beta")

    def extra_metrics(self, cfg, trainer, eval_set):
        """Return the last logged value of the stage's reward metrics (train and eval)."""
        return logged_metrics(trainer, self.logged)


# --------------------------------------------------------------------------------------------
# tokenization


def encode_answer(tokenizer, prompt: list[dict], answer: list[dict], data, origin: str = "") -> tuple[list, list, str]:
    """Return ``(input_ids, labels, note)`` for ``prompt + answer`` rendered with the chat template.

    Labels cover the answer only (every token with ``data.train_on_prompt``). ``note`` is ``""``,
    ``"truncated"``, or the reason the example must be skipped (overlength, no answer token left).
    ``origin`` (``file:line``) starts a template refusal's message.
    """
    from medtune.data.tokenize.spans import Conversation

    ids, labels = encode_conversation(tokenizer, Conversation(prompt + answer, origin), data.train_on_prompt)
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
    from medtune.data.readers.records import origin

    rows = []
    for rec in records:
        c_ids, c_labels, c_note = encode_answer(tokenizer, rec["prompt"], rec["chosen"], cfg.data, origin(rec))
        r_ids, r_labels, r_note = encode_answer(tokenizer, rec["prompt"], rec["rejected"], cfg.data, origin(rec))
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
    import torch

    names = [k for k in features[0] if k.startswith("ref_")]
    return {k: torch.tensor([f[k] for f in features], dtype=torch.float32) for k in names}


def logged_metrics(trainer, names=("rewards/accuracies", "rewards/margins")) -> dict:
    """Return the last logged value of each metric in ``names`` (train, and eval when logged)."""
    found = {}
    for entry in trainer.state.log_history:
        for name in names:
            for key in (name, f"eval_{name}"):
                if key in entry:
                    found[key.replace("/", "_")] = entry[key]
    return found
