"""The stage contract: a ``Recipe`` is the named steps of one training stage.

Its row in :mod:`medtune.config.stages` says what the stage is (data shapes, packing, the config
sections it reads, defaults); the recipe says how it trains. The steps, in the order they run:

- ``check_config(cfg, src)``: the stage's own config rules; config validation calls it (``medtune
  train`` / ``medtune pipeline`` load the YAML), before anything loads;
- ``load_model(cfg, path)``: the model to train (default: the causal LM at ``path``);
- ``make_examples(cfg, tokenizer, records, stats)``: records -> training rows, also in
  tokenization worker processes (so a recipe must pickle);
- ``make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs)``: the trainer (default: the
  guarded ``Trainer`` with medtune's collator); ``kwargs`` are the shared ``TrainingArguments``;
- ``extra_metrics(cfg, trainer, eval_set)``: stage metrics for ``lineage.json``, after training;
- ``prepare_save(cfg, trainer)``: make ``trainer.model`` what is saved, right before saving.

:func:`medtune.recipes.run.run_stage` calls all but the first. A recipe module imports no torch at
module level: config validation imports it. Example::

    class MyRecipe(Recipe):
        def make_examples(self, cfg, tokenizer, records, stats):
            return encode_texts(tokenizer, (r["text"] for r in records), 512, "truncate", stats)
"""

from __future__ import annotations


class Recipe:
    """One training stage; subclasses override the steps that differ (``make_examples`` always)."""

    def __init__(self, spec):
        self.spec = spec  # the stage's row in the stage table

    def check_config(self, cfg, src: str) -> None:
        """Raise a MedtuneError (prefixed with ``src``) for a config this stage cannot train."""

    def load_model(self, cfg, path: str):
        """Return the causal LM at ``path`` (quantized for qlora; an adapter dir merged unless
        adapter.incremental keeps training it)."""
        from medtune.models.load import load_model

        m = cfg.model
        return load_model(path, m.dtype, m.device, m.trust_remote_code,
                          quant_bits=cfg.adapter.bits if cfg.adapter.method == "qlora" else None,
                          merge_adapters=not cfg.adapter.incremental)

    def make_examples(self, cfg, tokenizer, records: list, stats) -> list[dict]:
        """Return the training rows of ``records``, counting what happened in ``stats``."""
        raise NotImplementedError

    def make_trainer(self, cfg, model, tokenizer, train_set, eval_set, kwargs: dict):
        """Return the guarded ``Trainer`` with medtune's collator (pt, sft)."""
        from transformers import TrainingArguments

        from medtune.data.tokenize.examples import Collator
        from medtune.models.accel import flattens_batches
        from medtune.recipes.trainer import MedtuneTrainer, quiet_trainer

        trainer = MedtuneTrainer(model=model, args=TrainingArguments(**kwargs), train_dataset=train_set,
                                 eval_dataset=eval_set, data_collator=Collator(tokenizer.pad_token_id, flatten=flattens_batches(model)),
                                 processing_class=tokenizer)
        return quiet_trainer(trainer, kwargs["disable_tqdm"])

    def extra_metrics(self, cfg, trainer, eval_set) -> dict:
        """Return stage metrics for the lineage beyond the losses every stage reports."""
        return {}

    def prepare_save(self, cfg, trainer) -> None:
        """Leave ``trainer.model`` as it should be saved (default: as trained)."""


class StageExamples:
    """``recipe.make_examples(cfg, tokenizer, records, stats)`` as a picklable ``make(records, stats)``
    for the data layer's sharded tokenization (workers unpickle the recipe by its class)."""

    def __init__(self, recipe: Recipe, cfg, tokenizer):
        self.recipe, self.cfg, self.tokenizer = recipe, cfg, tokenizer

    def __call__(self, records: list, stats) -> list[dict]:
        return self.recipe.make_examples(self.cfg, self.tokenizer, records, stats)
