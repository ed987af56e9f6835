"""Safety guards: a NaN loss stops the run keeping the last good checkpoint; half checkpoints are
never resumed from; curricula order the data easy -> hard."""

from __future__ import annotations

import pytest
import torch

from medtune.errors import MedtuneError
from medtune.recipes.run import resume_point, run_stage
from medtune.recipes.run_dir import COMPLETE, last_checkpoint
from medtune.recipes.trainer import NonFiniteLoss
from tests.conftest import CONVERSATIONS, write_jsonl
from tests.integration.test_train import config, sft_data

pytestmark = pytest.mark.slow


class PoisonAt:
    """Patch the model's forward so its loss becomes NaN from step ``step`` on."""

    def __init__(self, model, step):
        self.calls, self.step, self.forward = 0, step, model.forward

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        self.calls += 1
        if self.calls >= self.step:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path, monkeypatch):
    from medtune.recipes.sft import SFTRecipe

    real = SFTRecipe.make_trainer

    def poisoned(self, cfg, model, *args):
        model.forward = PoisonAt(model, step=5)
        return real(self, cfg, model, *args)

    monkeypatch.setattr(SFTRecipe, "make_trainer", poisoned)
    cfg = config(tiny_dir, sft_data(tmp_path), tmp_path / "out", adapter={"method": "full"},
                 train={"max_steps": 10, "save_steps": 2, "batch_size": 2})
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 5; training stopped before the update "
                                            r"\(the last good checkpoint .*checkpoint-4 is kept\)"):
        run_stage(cfg, quiet=True)
    ckpt = last_checkpoint(tmp_path / "out" / "checkpoints")
    assert ckpt.endswith("checkpoint-4") and not (tmp_path / "out" / "lineage.json").exists()
    from safetensors.torch import load_file

    weights = load_file(f"{ckpt}/model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert issubclass(NonFiniteLoss, MedtuneError)  # the CLI prints it as one line, exit 2


def test_a_checkpoint_without_its_completion_marker_is_never_resumed(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        (ckpts / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if complete:
            (ckpts / f"checkpoint-{step}" / COMPLETE).write_text("ok\n")
    assert resume_point(tmp_path).endswith("checkpoint-4")
    assert not (ckpts / "checkpoint-6").exists()  # the half-written one is removed


def test_checkpoints_written_by_training_carry_the_marker(tiny_dir, tmp_path):
    cfg = config(tiny_dir, sft_data(tmp_path), tmp_path / "out", train={"max_steps": 4, "save_steps": 2})

    class Stop(Exception):
        pass

    from transformers import TrainerCallback

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise Stop

    with pytest.raises(Stop):
        run_stage(cfg, quiet=True, callbacks=[StopAfterSave()])
    done = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*") if (p / COMPLETE).is_file())
    assert done == ["checkpoint-2", "checkpoint-4"]


def order_seen(tiny_dir, tmp_path, curriculum, files):
    """Return (attention lengths of the batches in training order, bucket of each row in order)."""
    from transformers import TrainerCallback

    seen = {}

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            batches = list(train_dataloader)
            seen["lengths"] = [int(b["attention_mask"].sum()) for b in batches]
            seen["buckets"] = list(train_dataloader.dataset["bucket"])

    cfg = config(tiny_dir, files[0], tmp_path / curriculum,
                 data={"train": [str(f) for f in files], "curriculum": curriculum},
                 train={"epochs": 1, "batch_size": 1, "save_steps": -1})
    run_stage(cfg, quiet=True, callbacks=[Record()])
    return seen["lengths"], seen["buckets"]


def test_length_curriculum_trains_shortest_first(tiny_dir, tmp_path):
    lengths, _ = order_seen(tiny_dir, tmp_path, "length", [sft_data(tmp_path)])
    assert lengths == sorted(lengths) and len(set(lengths)) > 1


def test_bucket_curriculum_trains_files_in_the_order_listed(tiny_dir, tmp_path):
    hard = write_jsonl(tmp_path / "hard.jsonl", [{"messages": CONVERSATIONS[1]}] * 3)
    easy = write_jsonl(tmp_path / "easy.jsonl", [{"messages": CONVERSATIONS[3]}] * 3)
    _, buckets = order_seen(tiny_dir, tmp_path, "buckets", [easy, hard])
    assert buckets == [0, 0, 0, 1, 1, 1]


def test_perplexity_curriculum_orders_by_the_starting_models_loss(tiny_dir, tiny, tmp_path):
    from medtune.recipes.curriculum import sample_losses

    model, tok = tiny
    lengths, _ = order_seen(tiny_dir, tmp_path, "perplexity", [sft_data(tmp_path)])
    assert len(lengths) == 16
    from datasets import Dataset

    from medtune.data.tokenize.examples import TokenStats, encode_conversations

    rows = encode_conversations(tok, CONVERSATIONS, 128, "truncate", False, TokenStats())
    losses = sample_losses(model, Dataset.from_list(rows), tok.pad_token_id, 2)
    by_loss = sorted(range(4), key=lambda i: losses[i])
    # Each conversation appears 4 times: the seen order is blocks of equal lengths, easiest first.
    expected = [len(rows[i]["input_ids"]) for i in by_loss]
    assert [lengths[i] for i in range(0, 16, 4)] == expected
