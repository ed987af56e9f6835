"""Training recipes, one module per stage, each a :class:`medtune.recipes.recipe.Recipe`.

The stage table (:mod:`medtune.config.stages`) names each stage's recipe class and what the stage
trains on; :func:`medtune.recipes.run.run_stage` runs the recipe's steps. Adding a stage is one
recipe module plus one row in the table (or :func:`medtune.config.stages.register_stage`).
"""
