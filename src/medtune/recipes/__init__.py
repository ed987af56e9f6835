"""Training recipes, one module per stage; each says only how records become examples.

A recipe module defines ``SHAPES`` (the data shapes it trains on), ``PACK_BY_DEFAULT`` and
``make_examples(cfg, tokenizer, records, stats)``. Optional hooks, used by
:func:`medtune.recipes.run.run_stage` when present:

- ``load_model(cfg, path)``: the model to train (default: the causal LM at ``path``);
- ``make_trainer(cfg, model, tokenizer, train_set, eval_set, kwargs)``: the trainer (default: the
  guarded ``Trainer`` with medtune's collator); ``kwargs`` are the shared ``TrainingArguments``;
- ``extra_metrics(cfg, trainer, eval_set)``: stage metrics for ``lineage.json``.
"""

import importlib


class _Recipes(dict):
    """Stage name -> recipe module, imported on first use (keeps ``medtune --help`` fast)."""

    def __missing__(self, stage):
        module = importlib.import_module(f"medtune.recipes.{MODULES[stage]}")
        self[stage] = module
        return module


MODULES = {"pt": "pt", "sft": "sft", "rm": "rm", "dpo": "dpo", "orpo": "orpo", "simpo": "simpo",
           "kto": "kto", "grpo": "grpo", "rloo": "rloo"}
RECIPES = _Recipes()
