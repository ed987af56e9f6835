"""The stage table: one row per training stage, from which config validation, pipeline
validation and ``medtune train --help`` are derived.

A row is declarative data (config is the lowest layer and never imports a recipe statically);
``recipe`` names the class that runs the stage, imported only when a config is checked or run.
Adding a stage is one recipe module plus one row. Example::

    from medtune.config.stages import StageSpec, register_stage
    register_stage(StageSpec("mystage", "mypkg.recipe:MyRecipe", "my stage", shapes=("messages",)))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from medtune.errors import MedtuneError, did_you_mean

# Why a stage refuses a data option it cannot honour, by option ({stage} is filled in).
PAIRS_NOT_PACKED = ("data.packing: true does not apply to stage {stage} (chosen and rejected answers "
                    "are compared row by row); set it to auto or false")
PROMPTS_NOT_PACKED = "data.packing does not apply to stage {stage}: its rows are prompts to sample from"
COMPLETIONS_ONLY = "data.train_on_prompt does not apply to stage {stage}: it learns from sampled completions"


@dataclass(frozen=True)
class StageSpec:
    """What a stage is, as data: its recipe, the data it trains on and the config it reads."""

    name: str
    recipe: str  # "module:Class", a medtune.recipes.recipe.Recipe subclass
    summary: str  # one line for `medtune train --help`
    shapes: tuple[str, ...]  # data shapes it trains on (medtune.data.readers.formats.SHAPES)
    packs_by_default: bool = False  # data.packing: auto packs rows of this stage
    perplexity_order: bool = False  # rows are LM examples: data.curriculum: perplexity can score them
    sections: tuple[str, ...] = ()  # optional config it reads: preference, rl, reward_model
    defaults: dict = field(default_factory=dict)  # what a 0 means, e.g. {"preference.beta": 0.1}
    mixes: bool = False  # data.mixture: text and conversations in one stage, by share of samples
    refuses: dict = field(default_factory=dict)  # data option (train_on_prompt, packing) -> why

    def default(self, key: str):
        """Return the stage's default for ``key``; a missing one is an error, never a silent 0."""
        if key not in self.defaults:
            raise MedtuneError(f"stage {self.name} has no default for {key}: set {key} in the config "
                               f"or add it to the stage's StageSpec defaults")
        return self.defaults[key]


PREFERENCE = ("preference",)
RL = ("rl", "reward_model")
PAIR_SHAPE = ("preference",)
_TABLE = [
    StageSpec("pt", "medtune.recipes.pt:PTRecipe", "continued pretraining on plain text, packed into blocks",
              ("text",), packs_by_default=True, perplexity_order=True, mixes=True,
              refuses={"train_on_prompt": "data.train_on_prompt does not apply to pt (every token is learned)"}),
    StageSpec("sft", "medtune.recipes.sft:SFTRecipe", "supervised fine-tuning on conversations",
              ("messages",), perplexity_order=True, mixes=True),
    StageSpec("rm", "medtune.recipes.rm:RMRecipe", "reward model scoring chosen over rejected answers",
              PAIR_SHAPE, sections=PREFERENCE, refuses={
                  "train_on_prompt": "data.train_on_prompt does not apply to stage rm (it scores whole answers)",
                  "packing": PAIRS_NOT_PACKED}),
    StageSpec("dpo", "medtune.recipes.dpo:DPORecipe", "direct preference optimisation against the start",
              PAIR_SHAPE, sections=PREFERENCE, defaults={"preference.beta": 0.1}, refuses={"packing": PAIRS_NOT_PACKED}),
    StageSpec("orpo", "medtune.recipes.orpo:ORPORecipe", "SFT plus an odds-ratio penalty, no reference",
              PAIR_SHAPE, sections=PREFERENCE, defaults={"preference.beta": 0.1}, refuses={"packing": PAIRS_NOT_PACKED}),
    StageSpec("simpo", "medtune.recipes.simpo:SimPORecipe", "reference-free length-averaged preference margin",
              PAIR_SHAPE, sections=PREFERENCE, defaults={"preference.beta": 2.0}, refuses={"packing": PAIRS_NOT_PACKED}),
    StageSpec("kto", "medtune.recipes.kto:KTORecipe", "answers labelled desirable / undesirable, no pairs",
              ("kto", "preference"), sections=PREFERENCE, defaults={"preference.beta": 0.1},
              refuses={"packing": PAIRS_NOT_PACKED}),
    StageSpec("grpo", "medtune.recipes.grpo:GRPORecipe", "online RL, completions scored against their group",
              ("messages", "preference"), sections=RL,
              refuses={"packing": PROMPTS_NOT_PACKED, "train_on_prompt": COMPLETIONS_ONLY}),
    StageSpec("rloo", "medtune.recipes.rloo:RLOORecipe", "online RL, REINFORCE leave-one-out",
              ("messages", "preference"), sections=RL,
              refuses={"packing": PROMPTS_NOT_PACKED, "train_on_prompt": COMPLETIONS_ONLY}),
]
STAGE_TABLE: dict[str, StageSpec] = {spec.name: spec for spec in _TABLE}
REMOVED_STAGES = {
    "ppo": "stage 'ppo' is not available: TRL removed its PPO trainer in 1.13; use stage: grpo or "
           "stage: rloo (online RL scored by reward_model and/or rl.reward_functions), or stage: dpo",
}


def register_stage(spec: StageSpec) -> None:
    """Add (or replace) a stage: config validation, pipelines, the CLI help and run_stage accept it."""
    STAGE_TABLE[spec.name] = spec


def stage_spec(name: str) -> StageSpec:
    """Return the row of stage ``name``; a removed or unknown stage is an error saying what to use."""
    if name in REMOVED_STAGES:
        raise MedtuneError(REMOVED_STAGES[name])
    if name not in STAGE_TABLE:
        raise MedtuneError(f"stage: '{name}' is not a stage" + did_you_mean(name, list(STAGE_TABLE)))
    return STAGE_TABLE[name]


def stages_reading(section: str) -> tuple[str, ...]:
    """Return the stages that read optional config ``section`` (preference, rl, reward_model)."""
    return tuple(name for name, spec in STAGE_TABLE.items() if section in spec.sections)


def stages_mixing() -> tuple[str, ...]:
    """Return the stages that train a data.mixture (text and conversations together)."""
    return tuple(name for name, spec in STAGE_TABLE.items() if spec.mixes)


def stage_recipe(name: str):
    """Return the recipe that runs stage ``name`` (an instance of the class its row names)."""
    spec = stage_spec(name)
    module, _, cls = spec.recipe.partition(":")
    return getattr(importlib.import_module(module), cls)(spec)


def packs_rows(cfg) -> bool:
    """Return True when ``cfg``'s rows are packed: data.packing true, or auto where the stage packs
    by default and no curriculum orders the samples."""
    d = cfg.data
    return d.packing == "true" or (d.packing == "auto" and STAGE_TABLE[cfg.stage].packs_by_default
                                   and d.curriculum == "none")
