"""Training recipes, one module per stage; each says only how records become examples."""

from medtune.recipes import pt, sft

RECIPES = {"pt": pt, "sft": sft}
