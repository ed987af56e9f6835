"""Multi-stage pipelines: validate every stage first, then run them in order, each from its parent.

Re-running a pipeline skips finished stages (their ``lineage.json`` exists and the config is the
same) and resumes an interrupted one from its last complete checkpoint. Example::

    medtune pipeline examples/medicalgpt.yaml
    medtune pipeline examples/medicalgpt.yaml 'stages.*.train.max_steps=2' base.path=runs/tiny
"""

from __future__ import annotations

import logging
from pathlib import Path

from medtune.config import StageConfig
from medtune.errors import MedtuneError

log = logging.getLogger("medtune")


def validate_pipeline(stages: list[StageConfig]) -> None:
    """Raise a one-line error for the first problem in any stage, before anything trains.

    Checks that no output overlaps an input or another output, each stage's data files (format,
    shape, every record), that a model path which is not an earlier stage's output exists, reward
    model dirs, and that each adapter method fits the base architecture (on a weightless
    meta-device copy of the model).
    """
    from medtune.recipes.run import read_stage_data

    outputs = {str(Path(c.output)) for c in stages}
    vocab = getattr(stages, "vocab", None)
    if vocab:
        outputs.add(str(Path(vocab.output)))
    guard_pipeline_outputs(stages)
    if vocab:
        _prefixed("vocab", _check_model, vocab.base)
        for path in vocab.corpus:
            if not Path(path).is_file():
                raise MedtuneError(f"vocab: corpus file '{path}' not found")
    for cfg in stages:
        where = f"stage {cfg.name or cfg.stage}"
        _prefixed(where, read_stage_data, cfg)
        if str(Path(cfg.model.path)) not in outputs:
            _prefixed(where, _check_model, cfg.model.path)
        if cfg.reward_model and str(Path(cfg.reward_model)) not in outputs:
            from medtune.recipes.rl import check_reward_model

            _prefixed(where, check_reward_model, cfg.reward_model)
        for spec in cfg.rl.reward_functions:
            from medtune.recipes.rl import stage_reward

            _prefixed(where, stage_reward, spec, cfg.rl)
    _check_adapters(stages, outputs)


def guard_pipeline_outputs(stages: list[StageConfig]) -> None:
    """Refuse a stage output that equals, lies inside or contains any input of the pipeline (the
    base model, every stage's data, reward model and DeepSpeed config, the vocab corpus) or
    another stage's output (a model.path or reward_model that is an earlier stage's output is
    no input)."""
    import itertools
    import os

    from medtune.recipes.run import guard_stage_output, stage_inputs

    inputs: dict[str, list] = {}
    vocab = getattr(stages, "vocab", None)
    earlier = set()  # outputs written before the stage at hand: what it reads from them is no input
    if vocab:
        inputs = {"vocab base": [vocab.base] if Path(vocab.base).exists() else [], "vocab corpus": list(vocab.corpus)}
        earlier.add(str(Path(vocab.output)))
    for cfg in stages:
        for key, paths in stage_inputs(cfg).items():
            paths = [p for p in ([paths] if isinstance(paths, str) else paths or []) if p]
            inputs.setdefault(key, []).extend(p for p in paths if str(Path(p)) not in earlier)
        earlier.add(str(Path(cfg.output)))
    written = [(f"stage {c.name or c.stage}", c.output) for c in stages]
    if vocab:
        written.append(("vocab", vocab.output))
    for (a, out_a), (b, out_b) in itertools.combinations(written, 2):
        real_a, real_b = Path(os.path.realpath(out_a)), Path(os.path.realpath(out_b))
        if real_a == real_b or real_a.is_relative_to(real_b) or real_b.is_relative_to(real_a):
            raise MedtuneError(f"{a} output '{out_a}' and {b} output '{out_b}' overlap; "
                               "give each stage its own output dir")
    for cfg in stages:
        _prefixed(f"stage {cfg.name or cfg.stage}", guard_stage_output, cfg, inputs)
    if vocab:
        from medtune.files import guard_outputs

        _prefixed("vocab", guard_outputs, {"output": vocab.output}, inputs)


def _prefixed(where: str, check, *args) -> None:
    try:
        check(*args)
    except MedtuneError as exc:
        raise MedtuneError(f"{where}: {exc}") from None


def _check_model(path: str) -> None:
    from medtune.models.load import check_model_path

    check_model_path(path)


def _check_adapters(stages: list[StageConfig], outputs: set[str]) -> None:
    """Check every stage's adapter against the architecture of the pipeline's first model."""
    from medtune.models.adapters import check_adapter_fits

    vocab = getattr(stages, "vocab", None)
    first = next((c.model for c in stages if str(Path(c.model.path)) not in outputs), stages[0].model)
    base = vocab.base if vocab else first.path
    if not Path(base).is_dir():
        return  # a hub id: checked when the stage loads it (no download just to validate)
    skeleton = meta_model(base, first.trust_remote_code)
    for cfg in stages:
        if cfg.stage == "rm":
            continue  # a different head; checked when the stage loads it
        _prefixed(f"stage {cfg.name or cfg.stage}", check_adapter_fits, skeleton, cfg.adapter)


def meta_model(path: str, trust_remote_code: bool):
    """Return the causal LM at ``path`` built on the meta device: its structure, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from medtune.models.load import adapter_base, is_adapter_dir

    if is_adapter_dir(path):
        path = adapter_base(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def run_vocab_step(step, report=print) -> dict:
    """Grow the base vocabulary into ``step.output`` unless that exact step already ran there."""
    import json

    from medtune.models.vocab import extend_vocabulary

    done = Path(step.output) / "vocab_report.json"
    options = {"add": step.add, "min_freq": step.min_freq, "max_chars": step.max_chars}
    if done.is_file():
        old = json.loads(done.read_text(encoding="utf-8"))
        if old.get("base") == step.base and old.get("corpus") == step.corpus and old.get("options") == options:
            report(f"[vocab] {step.output} already holds this vocabulary; skipped")
            return old
    report(f"[vocab] learning up to {step.add} domain tokens from {len(step.corpus)} file(s)")
    result = extend_vocabulary(step.base, step.corpus, step.add, step.output, step.min_freq, step.max_chars,
                               overwrite=True)
    c = result["corpus_tokens"]
    report(f"[vocab] added {len(result['added'])} tokens; domain corpus {c['before']} -> {c['after']} tokens "
           f"({c['ratio']:.2f}x)")
    return result


def run_pipeline(stages: list[StageConfig], overwrite: bool = False, quiet: bool = False, report=print):
    """Validate then run ``stages`` in order; return their ``StageResult`` list.

    ``report(line)`` receives one progress line per stage.
    """
    from medtune.recipes.run import run_stage

    validate_pipeline(stages)
    vocab = getattr(stages, "vocab", None)
    if vocab:
        run_vocab_step(vocab, report)
    results = []
    for i, cfg in enumerate(stages, 1):
        report(f"[{i}/{len(stages)}] {cfg.name}: {cfg.stage} ({cfg.adapter.method}) from {cfg.model.path}")
        results.append(run_stage(cfg, overwrite=overwrite, quiet=quiet))
    return results
