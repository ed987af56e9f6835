"""Online RL shared by grpo and rloo: sample completions per prompt, score them, move towards the better.

Example (``grpo.yaml``, after ``medtune model tiny -o runs/tiny``)::

    stage: grpo
    model: {path: runs/tiny}
    data: {train: [src/medtune/assets/sample/messages.jsonl], max_length: 256}
    train: {max_steps: 10, batch_size: 4, logging_steps: 1}
    rl: {num_generations: 4, max_new_tokens: 32, reward_functions: [reference_overlap, no_repetition]}
    output: runs/grpo

    medtune train grpo.yaml
    medtune train grpo.yaml reward_model=runs/rm rl.beta=0.04   # add a reward model from stage rm

Each prompt (a conversation up to its last user turn) gets ``rl.num_generations`` sampled
completions of at most ``rl.max_new_tokens`` tokens at ``rl.temperature``. Each is scored by the
reward model (``reward_model:``, a dir written by stage rm) and/or ``rl.reward_functions``; the
scores are summed with ``rl.reward_weights`` (reward model first). GRPO compares each completion
with its group's mean, RLOO with the mean of the others. ``rl.beta`` > 0 keeps the starting model
as a reference and penalises drifting from it (KL, logged as ``kl``). The record's answer (last
assistant turn, or ``chosen``) is passed to reward functions as ``reference``. TRL's sampler
draws each prompt's group, so ``train.group_by_length`` does not apply here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.recipes.recipe import Recipe


def split_record(record: dict):
    """Return ``(prompt_messages, reference_text)``: the conversation up to its last user turn and
    the answer after it (a messages record's last assistant turn, a preference record's chosen)."""
    if "messages" not in record:
        return record["prompt"], record["chosen"][-1]["content"]
    msgs = record["messages"]
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        return None, None
    answers = [m["content"] for m in msgs[users[-1] + 1:] if m["role"] == "assistant"]
    return msgs[: users[-1] + 1], answers[-1] if answers else ""


def make_examples(cfg, tokenizer, records, stats):
    """Return ``{prompt, reference, length}`` rows; prompts over data.max_length tokens are skipped
    (whatever data.overlength says: a cut prompt asks a different question)."""
    from medtune.data.tokenize.examples import apply_template

    rows = []
    for record in records:
        prompt, reference = split_record(record)
        if prompt is None:
            stats.skip("no user turn to prompt with")
            continue
        n_tokens = len(apply_template(tokenizer, prompt, add_generation_prompt=True)["input_ids"])
        if n_tokens > cfg.data.max_length:
            stats.skip("prompt longer than data.max_length")
            continue
        rows.append({"prompt": prompt, "reference": reference, "length": n_tokens})
    stats.examples += len(rows)
    stats.rows += len(rows)
    return rows


def stage_reward(spec: str, rl):
    """Return the reward function ``spec`` names for a stage whose rl config is ``rl``: ``judge``
    built from ``rl.judge`` (nothing contacted yet), any other through ``reward_function``."""
    from medtune.recipes.rewards import CONFIGURED, reward_function

    if spec in CONFIGURED:
        from medtune.recipes.judge_reward import JudgeReward

        return JudgeReward(rl.judge)
    return reward_function(spec)


def check_rewards(cfg) -> None:
    """Raise a one-line MedtuneError for an unknown reward function or a reward_model dir that is
    not a reward model (reads config files only, no weights)."""
    for spec in cfg.rl.reward_functions:
        stage_reward(spec, cfg.rl)
    if cfg.reward_model:
        check_reward_model(cfg.reward_model)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_reward_model(path: str) -> None:
    """Raise a one-line MedtuneError unless ``path`` is a reward model dir (a one-label
    ``*ForSequenceClassification`` model or a SEQ_CLS adapter, with a chat template); reads
    config files only, no weights."""
    from medtune.models.load import check_model_path

    p = Path(path)
    if not p.is_dir():
        raise MedtuneError(f"reward model '{path}' not found (expected a dir written by stage rm)")
    adapter = _read_json(p / "adapter_config.json")
    if adapter:
        if adapter.get("task_type") != "SEQ_CLS":
            raise MedtuneError(f"'{path}' is not a reward model (an adapter with task_type "
                               f"{adapter.get('task_type')}); train one with stage: rm")
        check_model_path(adapter.get("base_model_name_or_path") or "")
    else:
        config = _read_json(p / "config.json")
        if not config:
            raise MedtuneError(f"'{path}' is not a reward model (no config.json); train one with stage: rm")
        archs = config.get("architectures") or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise MedtuneError(f"'{path}' is not a reward model (architectures: {', '.join(archs) or 'none'}); "
                               "train one with stage: rm")
        labels = len(config.get("id2label") or {0: 0, 1: 1})  # none saved: the default two labels
        if labels != 1:
            raise MedtuneError(f"'{path}' is a classifier with {labels} labels; a reward model has one score")
    tok_config = _read_json(p / "tokenizer_config.json")
    if not tok_config:
        raise MedtuneError(f"reward model '{path}' has no tokenizer (tokenizer_config.json)")
    if not ((p / "chat_template.jinja").is_file() or tok_config.get("chat_template")):
        raise MedtuneError(f"reward model '{path}' has no chat template; it scores conversations rendered with it")


def load_reward_model(path: str, dtype: str = "auto", device: str = "cpu"):
    """Return ``(model, tokenizer)`` of the reward model in ``path``, frozen, in eval mode.

    An adapter dir (stage rm with LoRA) is merged into the classifier built on its base.
    """
    from medtune.models import load

    check_reward_model(path)
    tokenizer = load.load_tokenizer(path)
    if load.is_adapter_dir(path):
        model = load.merge_adapter(load.load_classifier(load.adapter_base(path), dtype, device), path)
    else:
        model = load.load_classifier(path, dtype, device)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    model.requires_grad_(False)
    return model.to(device).eval(), tokenizer


def reward_sources(cfg, device: str):
    """Return ``(reward_funcs, reward_processing_classes)`` for TRL, the reward model first.

    TRL renders prompt + completion with the reward model's own chat template and tokenizer and
    reads its score; built-in ``length`` also gets ``rl.max_new_tokens`` to spot cut-off answers.
    """
    import functools

    from medtune.recipes.rewards import checked_reward, length

    funcs, classes = [], []
    if cfg.reward_model:
        model, tokenizer = load_reward_model(str(Path(cfg.reward_model).resolve()), cfg.model.dtype, device)
        funcs.append(model)
        classes.append(tokenizer)
    for spec in cfg.rl.reward_functions:
        fn = stage_reward(spec, cfg.rl)
        fn = functools.partial(fn, max_new_tokens=cfg.rl.max_new_tokens) if fn is length else fn
        funcs.append(checked_reward(fn, spec))  # a raise or a NaN refuses the step, naming spec
        classes.append(None)
    return funcs, classes


def rl_arguments(cfg, kwargs: dict, config_cls, algorithm_args: dict | None = None):
    """Return the TRL ``GRPOConfig`` / ``RLOOConfig`` for ``cfg`` from the shared trainer kwargs
    and the algorithm's own (``loss_type`` for GRPO)."""
    r = cfg.rl
    args = dict(kwargs)
    # TRL's sampler repeats each prompt num_generations times; length grouping does not apply.
    args["train_sampling_strategy"] = "random"
    # An eval batch must hold whole groups too.
    groups = math.ceil(args["per_device_eval_batch_size"] / r.num_generations)
    args["per_device_eval_batch_size"] = groups * r.num_generations
    return config_cls(
        **args,
        num_generations=r.num_generations,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        beta=r.beta,
        reward_weights=list(r.reward_weights) or None,
        **(algorithm_args or {}),
    )


def drop_reference_adapter(model) -> None:
    """Remove the frozen ``ref`` adapter TRL adds to a PEFT policy when beta > 0 (not an output)."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config and "ref" in peft_config:
        model.delete_adapter("ref")


def reward_log_metrics(log_history: list) -> dict:
    """Return the mean reward at the first and last log (total and per reward), and the last KL."""
    logs = [h for h in log_history if h.get("reward") is not None]
    if not logs:
        return {}
    first, last = logs[0], logs[-1]
    metrics = {"reward_start": round(first["reward"], 6), "reward_end": round(last["reward"], 6)}
    names = [k for k in first if k.startswith("rewards/") and k.endswith("/mean")]
    metrics["rewards"] = {k[len("rewards/"):-len("/mean")]: [round(first[k], 6), round(last[k], 6)]
                          for k in names if last.get(k) is not None}
    if last.get("kl") is not None:
        metrics["kl_end"] = round(last["kl"], 6)
    return metrics


class RLRecipe(Recipe):
    """Online RL on a TRL trainer: grpo and rloo differ only in ``trl_classes``."""

    def trl_classes(self):
        """Return ``(trainer_cls, config_cls)`` of the TRL algorithm (imports trl)."""
        raise NotImplementedError

    def algorithm_args(self, cfg) -> dict:
        """Return the TRL config fields only this algorithm reads."""
        return {}

    def check_config(self, cfg, src: str) -> None:
        """Refuse a curriculum, a stage without rewards, and groups the batch cannot hold."""
        r, stage = cfg.rl, cfg.stage
        if cfg.data.curriculum != "none":
            raise MedtuneError(f"{src}: data.curriculum does not apply to {stage} (TRL samples prompts per group)")
        if not cfg.reward_model and not r.reward_functions:
            raise MedtuneError(f"{src}: stage {stage} needs reward_model: DIR and/or rl.reward_functions")
        n_rewards = int(bool(cfg.reward_model)) + len(r.reward_functions)
        if r.reward_weights and len(r.reward_weights) != n_rewards:
            raise MedtuneError(f"{src}: rl.reward_weights has {len(r.reward_weights)} weights for {n_rewards} rewards")
        if (cfg.train.batch_size * cfg.train.grad_accum) % r.num_generations:
            raise MedtuneError(f"{src}: train.batch_size x train.grad_accum must be a multiple of rl.num_generations")
        self._check_judge(cfg, src)

    def _check_judge(self, cfg, src: str) -> None:
        """Refuse rl.judge settings without the judge reward (they would be ignored), and judge
        settings that cannot work."""
        from medtune.config.schema import JudgeRewardConfig
        from medtune.recipes.judge_reward import check_judge_config

        if "judge" in cfg.rl.reward_functions:
            check_judge_config(cfg.rl.judge, src)
        elif cfg.rl.judge != JudgeRewardConfig():
            raise MedtuneError(f"{src}: rl.judge is set but judge is not in rl.reward_functions")

    def load_model(self, cfg, path: str):
        """Return the policy to train, after checking the stage's rewards (so a bad reward_model or
        reward function fails before the output dir is claimed and before any weights load)."""
        check_rewards(cfg)
        return super().load_model(cfg, path)

    def make_examples(self, cfg, tokenizer, records, stats):
        return make_examples(cfg, tokenizer, records, stats)

    def make_trainer(self, cfg, model, tokenizer, train_set, eval_set, kwargs: dict):
        """Return the guarded TRL RL trainer (``GRPOTrainer`` / ``RLOOTrainer``) for this stage."""
        from medtune.recipes.trainer import guarded, quiet_trainer

        trainer_cls, config_cls = self.trl_classes()
        funcs, classes = reward_sources(cfg, str(next(model.parameters()).device))
        trainer = guarded(trainer_cls, order=False)(
            model=model,
            reward_funcs=funcs,
            args=rl_arguments(cfg, kwargs, config_cls, self.algorithm_args(cfg)),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,  # its chat template renders the prompts
            reward_processing_classes=classes,
        )
        return quiet_trainer(trainer, kwargs["disable_tqdm"])

    def extra_metrics(self, cfg, trainer, eval_set) -> dict:
        """The rewards at the first and last log, and the judge's request counts when it ran."""
        from medtune.recipes.judge_reward import JudgeReward

        metrics = reward_log_metrics(trainer.state.log_history)
        for fn in trainer.reward_funcs:
            if isinstance(getattr(fn, "wrapped", None), JudgeReward):
                metrics["judge"] = fn.wrapped.usage
        return metrics

    def prepare_save(self, cfg, trainer) -> None:
        """Drop TRL's reference adapter so that only the trained adapter is saved."""
        drop_reference_adapter(trainer.model)
