"""Stage configs for tests: one builder instead of a copy per test module."""

from __future__ import annotations

from medtune.config import stage_from_dict


def stage_config(model_dir, data_paths, out, stage: str, **sections):
    """A StageConfig for a tiny CPU run: LoRA r4, batch 2, one log line per step, no checkpoints.

    ``sections`` are merged into the defaults (``train={"max_steps": 3}``); an adapter other than
    lora drops the LoRA options, which other methods refuse.
    """
    paths = data_paths if isinstance(data_paths, (list, tuple)) else [data_paths]
    raw = {"stage": stage, "model": {"path": str(model_dir), "device": "cpu"},
           "data": {"train": [str(p) for p in paths], "max_length": 128},
           "adapter": {"method": "lora", "rank": 4, "alpha": 8},
           "train": {"epochs": 1, "learning_rate": 5e-3, "batch_size": 2, "logging_steps": 1,
                     "save_steps": -1},
           "output": str(out)}
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    if raw["adapter"]["method"] not in ("lora", "dora"):
        raw["adapter"] = {k: v for k, v in raw["adapter"].items() if k not in ("rank", "alpha")}
    return stage_from_dict(raw, "test.yaml")


def logged(result, key: str = "loss") -> list[float]:
    """The values of ``key`` the trainer logged, in step order."""
    return [h[key] for h in result.log_history if h.get(key) is not None]
