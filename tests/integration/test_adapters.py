"""Every adapter method and option changes what trains; bad options fail with one-line errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from medtune.config.schema import AdapterConfig
from medtune.errors import MedtuneError
from medtune.models.adapters import apply_adapter, check_adapter_fits, count_parameters
from medtune.recipes.run import run_stage
from tests.conftest import CONVERSATIONS, write_jsonl
from tests.integration.test_train import Snapshot, logits, weights

pytestmark = pytest.mark.slow
LAYER_WIDTH = 2 * 2 * 16  # prefix values per virtual token: layers x (key, value) x kv_heads*head_dim


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", [{"messages": c} for c in CONVERSATIONS] * 4)


def config(model_path, data, out, adapter, train=None):
    """Return a 3-step SFT StageConfig on the tiny model with exactly these adapter options."""
    from medtune.config import stage_from_dict

    raw = {"stage": "sft", "model": {"path": str(model_path), "device": "cpu"},
           "data": {"train": [str(data)], "max_length": 256}, "adapter": adapter,
           "train": {"max_steps": 3, "learning_rate": 1e-2, "batch_size": 4, "logging_steps": 1, **(train or {})},
           "output": str(out)}
    return stage_from_dict(raw, "test.yaml")


def lora_run(tiny_dir, data, out, adapter=None, train=None, callbacks=()):
    """Run 3 LoRA SFT steps (rank 4, alpha 8 unless ``adapter`` says otherwise); return the result."""
    cfg = config(tiny_dir, data, out, adapter={"method": "lora", "rank": 4, "alpha": 8, **(adapter or {})},
                 train=train)
    return run_stage(cfg, quiet=True, callbacks=callbacks)


@pytest.fixture(scope="module")
def baseline(tiny_dir, data, tmp_path_factory):
    """The reference LoRA run the option tests compare against (same seed, same data)."""
    return lora_run(tiny_dir, data, tmp_path_factory.mktemp("runs") / "baseline")


def base_model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir)


def adapted_modules(model) -> set[str]:
    return {n.split(".lora_A")[0].removeprefix("base_model.model.") for n, _ in model.named_parameters()
            if ".lora_A." in n}


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- full / freeze --------------------------------------------------------------------------------

def test_freeze_trains_exactly_the_last_layers_and_named_modules(tiny_dir, data, tmp_path):
    snap = Snapshot()
    cfg = config(tiny_dir, data, tmp_path / "freeze",
                 adapter={"method": "freeze", "trainable_layers": 1, "trainable_modules": ["model.norm"]})
    result = run_stage(cfg, quiet=True, callbacks=[snap])
    expected = {n for n in snap.before if n.startswith("model.layers.1.")} | {"model.norm.weight"}
    assert snap.trainable == expected
    assert {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])} == expected
    before, after = weights(tiny_dir / "model.safetensors"), weights(result.output / "model.safetensors")
    frozen = [k for k in before if k.startswith(("model.layers.0.", "model.embed_tokens"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # bit-identical
    assert all(not torch.equal(before[k], after[k]) for k in before if k in expected)


@pytest.mark.parametrize("layers, modules, expected", [
    (2, [], lambda n: n.startswith("model.layers.")),
    (1, [], lambda n: n.startswith("model.layers.1.")),
    (0, ["embed_tokens"], lambda n: n == "model.embed_tokens.weight"),  # lm_head is tied to it: one tensor
    (1, ["norm"], lambda n: n.startswith("model.layers.1.") or "norm" in n),
])
def test_freeze_options_select_the_trainable_set(tiny_dir, layers, modules, expected):
    model = apply_adapter(base_model(tiny_dir),
                          AdapterConfig(method="freeze", trainable_layers=layers, trainable_modules=modules))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if expected(n)}


def test_full_trains_every_weight(tiny_dir):
    model = base_model(tiny_dir)
    model.requires_grad_(False)
    model = apply_adapter(model, AdapterConfig(method="full"))
    assert count_parameters(model)["trainable"] == count_parameters(model)["total"]


# --- lora / dora ----------------------------------------------------------------------------------

def test_lora_target_list_adapts_only_named_modules(tiny_dir):
    some = apply_adapter(base_model(tiny_dir), AdapterConfig(method="lora", target=["q_proj", "v_proj"]))
    every = apply_adapter(base_model(tiny_dir), AdapterConfig(method="lora"))
    assert adapted_modules(some) == {f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")}
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    assert adapted_modules(every) == {f"model.layers.{i}.{m}" for i in (0, 1) for m in projections}  # no lm_head


def test_rslora_scales_by_sqrt_rank_and_trains_differently(tiny_dir, data, baseline, tmp_path):
    plain = apply_adapter(base_model(tiny_dir), AdapterConfig(method="lora", rank=4, alpha=8))
    rs = apply_adapter(base_model(tiny_dir), AdapterConfig(method="lora", rank=4, alpha=8, rslora=True))
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert plain.get_submodule(q).scaling["default"] == 8 / 4
    assert rs.get_submodule(q).scaling["default"] == 8 / 4 ** 0.5
    result = lora_run(tiny_dir, data, tmp_path / "rslora", adapter={"rslora": True})
    assert not same_weights(weights(result.output / "adapter_model.safetensors"),
                            weights(baseline.output / "adapter_model.safetensors"))


def test_same_config_twice_gives_identical_weights(tiny_dir, data, baseline, tmp_path):
    again = lora_run(tiny_dir, data, tmp_path / "again")  # the invariance the option tests rely on
    assert same_weights(weights(again.output / "adapter_model.safetensors"),
                        weights(baseline.output / "adapter_model.safetensors"))


def test_dropout_changes_the_trained_adapter(tiny_dir, data, baseline, tmp_path):
    model = apply_adapter(base_model(tiny_dir), AdapterConfig(method="lora", dropout=0.3))
    assert model.get_submodule("base_model.model.model.layers.0.mlp.up_proj").lora_dropout["default"].p == 0.3
    result = lora_run(tiny_dir, data, tmp_path / "dropout", adapter={"dropout": 0.3})
    assert not same_weights(weights(result.output / "adapter_model.safetensors"),
                            weights(baseline.output / "adapter_model.safetensors"))


def test_dora_adds_magnitudes_trains_and_merges(tiny_dir, tiny, data, tmp_path):
    from peft import PeftModel

    from medtune.models.load import load_model

    lora = apply_adapter(base_model(tiny_dir), AdapterConfig(method="lora"))
    assert not [n for n, _ in lora.named_parameters() if "lora_magnitude_vector" in n]
    snap = Snapshot()
    result = run_stage(config(tiny_dir, data, tmp_path / "dora", adapter={"method": "dora", "rank": 4, "alpha": 8}),
                     quiet=True, callbacks=[snap])
    magnitudes = [n for n in snap.trainable if "lora_magnitude_vector" in n]
    assert len(magnitudes) == 14 and all(not torch.equal(snap.before[n], snap.after[n]) for n in magnitudes)
    assert any("lora_magnitude_vector" in k for k in weights(result.output / "adapter_model.safetensors"))
    _, tok = tiny
    unmerged = PeftModel.from_pretrained(base_model(tiny_dir), result.output)
    assert torch.allclose(logits(unmerged, tok), logits(load_model(str(result.output), "float32", "cpu"), tok),
                          atol=1e-5)


def test_modules_to_save_trains_and_saves_embeddings_and_head(tiny_dir, tiny, data, tmp_path):
    from peft import PeftModel

    from medtune.models.load import load_model

    snap = Snapshot()
    result = lora_run(tiny_dir, data, tmp_path / "mts", adapter={"modules_to_save": ["embed_tokens", "lm_head"]},
                      callbacks=[snap])
    copies = [n for n in snap.trainable if "modules_to_save" in n]
    assert copies and all(not torch.equal(snap.before[n], snap.after[n]) for n in copies)
    saved = weights(result.output / "adapter_model.safetensors")
    assert {"base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"} <= saved.keys()
    base, merged = base_model(tiny_dir), load_model(str(result.output), "float32", "cpu")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        trained = merged.get_parameter(name)
        assert torch.equal(trained, saved[f"base_model.model.{name}"])
        assert not torch.equal(trained, base.get_parameter(name))
    # The base ties lm_head to embed_tokens: they train as one tensor, so exports that re-tie lose nothing.
    assert torch.equal(saved["base_model.model.lm_head.weight"], saved["base_model.model.model.embed_tokens.weight"])
    _, tok = tiny
    merged.save_pretrained(tmp_path / "merged")
    unmerged = PeftModel.from_pretrained(base_model(tiny_dir), result.output)
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), tok),
                          logits(unmerged, tok), atol=1e-5)


def test_sequence_classification_trains_and_saves_its_head(tiny_dir, tmp_path):
    for method in ("lora", "dora"):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
        model.config.pad_token_id = 3
        peft_model = apply_adapter(model, AdapterConfig(method=method, rank=4, alpha=8))
        assert peft_model.peft_config["default"].task_type == "SEQ_CLS"
        head = "base_model.model.score.modules_to_save.default.weight"
        before = peft_model.get_parameter(head).detach().clone()
        ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
        opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
        peft_model(input_ids=ids, labels=torch.tensor([1.0, -1.0])).loss.backward()
        opt.step()
        assert not torch.equal(before, peft_model.get_parameter(head))
        peft_model.save_pretrained(tmp_path / method)
        assert "base_model.model.score.weight" in load_file(str(tmp_path / method / "adapter_model.safetensors"))
    frozen = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    frozen = apply_adapter(frozen, AdapterConfig(method="freeze", trainable_layers=1))
    assert frozen.score.weight.requires_grad  # the head starts random: it always trains


# --- neftune / incremental ------------------------------------------------------------------------

def test_neftune_changes_the_trained_weights(tiny_dir, data, baseline, tmp_path):
    result = lora_run(tiny_dir, data, tmp_path / "neft", train={"neftune_alpha": 5})
    assert not same_weights(weights(result.output / "adapter_model.safetensors"),
                            weights(baseline.output / "adapter_model.safetensors"))


def test_incremental_continues_the_saved_adapter_without_merging(tiny_dir, data, baseline, tmp_path):
    snap = Snapshot()
    cfg = config(baseline.output, data, tmp_path / "more",
                 adapter={"method": "lora", "rank": 4, "alpha": 8, "incremental": True}, train={"max_steps": 2})
    result = run_stage(cfg, quiet=True, callbacks=[snap])
    first = weights(baseline.output / "adapter_model.safetensors")
    started = {k.replace(".default.", "."): v for k, v in snap.before.items() if "lora_" in k}
    assert started.keys() == first.keys() and all(torch.equal(started[k], first[k]) for k in first)
    base = weights(tiny_dir / "model.safetensors")
    for name, value in snap.before.items():  # the base under the adapter is the bare base
        if "lora_" not in name:
            assert torch.equal(value, base[name.removeprefix("base_model.model.").replace(".base_layer", "")])
    assert not same_weights(weights(result.output / "adapter_model.safetensors"), first)
    saved = json.loads((result.output / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(Path(tiny_dir).resolve())


def test_incremental_refuses_options_that_differ_from_the_adapter(tiny_dir, data, baseline, tmp_path):
    for key, value, message in (("rank", 8, "adapter.rank is 8 but the adapter being continued"),
                                ("target", ["q_proj"], r"adapter.target \['q_proj'\] differs"),
                                ("method", "dora", "adapter.method is dora"),
                                ("modules_to_save", ["lm_head"], "adapter.modules_to_save .* differs")):
        adapter = {"method": "lora", "rank": 4, "alpha": 8, "incremental": True, key: value}
        cfg = config(baseline.output, data, tmp_path / key, adapter=adapter, train={"max_steps": 1})
        with pytest.raises(MedtuneError, match=message):
            run_stage(cfg, quiet=True)


# --- prefix ---------------------------------------------------------------------------------------

def test_prefix_options_change_the_trainable_parameters(tiny_dir):
    def trainable(**options):
        model = apply_adapter(base_model(tiny_dir), AdapterConfig(method="prefix", **options))
        return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}

    assert sum(trainable(num_virtual_tokens=4).values()) == 4 * LAYER_WIDTH
    assert sum(trainable(num_virtual_tokens=8).values()) == 8 * LAYER_WIDTH
    projected = trainable(num_virtual_tokens=4, prefix_projection=True)
    assert any(".transform." in n for n in projected) and sum(projected.values()) > 4 * LAYER_WIDTH


def test_prefix_trains_reloads_unmerged_and_chats(tiny_dir, tiny, data, tmp_path):
    from peft import PeftModel

    from medtune.inference.chat import ChatModel
    from medtune.models.load import load_model

    _, tok = tiny

    class FinalLogits(Snapshot):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            super().on_train_end(args, state, control, model=model, **kwargs)
            self.logits = logits(model.eval(), tok)

    snap = FinalLogits()
    cfg = config(tiny_dir, data, tmp_path / "prefix",
                 adapter={"method": "prefix", "num_virtual_tokens": 8, "prefix_projection": True},
                 train={"max_steps": 8, "batch_size": 16, "learning_rate": 5e-2, "lr_scheduler": "constant"})
    result = run_stage(cfg, quiet=True, callbacks=[snap])
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert all(b < a for a, b in itertools.pairwise(losses))  # one full batch: every step lowers the loss
    assert all(n.startswith("prompt_encoder.") for n in snap.trainable)
    reloaded = load_model(str(result.output), "float32", "cpu")
    assert isinstance(reloaded, PeftModel) and not reloaded.training
    assert torch.allclose(logits(reloaded, tok), snap.logits, atol=1e-5)
    assert not torch.allclose(logits(base_model(tiny_dir), tok), snap.logits, atol=1e-3)
    bot = ChatModel.load(result.output, device="cpu", max_new_tokens=6)
    reply, history = bot.chat("高血压有哪些症状？")
    assert isinstance(reply, str) and history[-1] == {"role": "assistant", "content": reply}
    [done] = bot.engine.generate([bot.prompt_ids([{"role": "user", "content": "感冒挂什么科？"}])],
                                 bot.settings)
    assert done.completion_tokens > 0


def test_a_prefix_model_cannot_be_trained_further_with_another_method(tiny_dir, tmp_path):
    from medtune.models.load import merge_adapter

    prefix = apply_adapter(base_model(tiny_dir), AdapterConfig(method="prefix", num_virtual_tokens=2))
    prefix.save_pretrained(tmp_path / "p")
    loaded = merge_adapter(base_model(tiny_dir), str(tmp_path / "p"))
    with pytest.raises(MedtuneError, match="is a prefix-tuning adapter .* cannot be merged into its base"):
        apply_adapter(loaded, AdapterConfig(method="lora"))


# --- errors ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def meta_model(tiny_dir):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_dir))


@pytest.mark.parametrize("adapter, message", [
    ({"method": "lora", "target": ["qproj"]},
     ("adapter.target: 'qproj' matches no module of LlamaForCausalLM; its linear modules are q_proj, k_proj, "
      "v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head")),
    ({"method": "dora", "target": ["q_proj", "attn"]}, "adapter.target: 'attn' matches no module"),
    ({"method": "lora", "modules_to_save": ["embed"]},
     "adapter.modules_to_save: 'embed' names no module of LlamaForCausalLM (its modules: model, embed_tokens, layers"),
    ({"method": "prefix", "modules_to_save": ["head"]}, "adapter.modules_to_save: 'head' names no module"),
    ({"method": "freeze", "trainable_layers": 3},
     "adapter.trainable_layers is 3 but LlamaForCausalLM has 2 decoder layers (model.layers.0-1)"),
    ({"method": "freeze", "trainable_modules": ["lmhead"]},
     ("adapter.trainable_modules: 'lmhead' matches no parameter name; names look like model.embed_tokens.weight, "
      "model.norm.weight, lm_head.weight")),
])
def test_check_adapter_fits_errors_on_a_meta_model(meta_model, adapter, message):
    before = {n: (p.requires_grad, p.device.type) for n, p in meta_model.named_parameters()}
    with pytest.raises(MedtuneError) as err:
        check_adapter_fits(meta_model, AdapterConfig(**adapter))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert {n: (p.requires_grad, p.device.type) for n, p in meta_model.named_parameters()} == before


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "dora", "qlora", "prefix"])
def test_check_adapter_fits_accepts_valid_configs_without_touching_the_model(meta_model, method):
    modules = ["lm_head"] if method != "freeze" and method != "full" else []
    options = {"modules_to_save": modules} if modules else {}
    before = {n: (p.requires_grad, p.device.type) for n, p in meta_model.named_parameters()}
    check_adapter_fits(meta_model, AdapterConfig(method=method, target=["q_proj"], **options))
    assert {n: (p.requires_grad, p.device.type) for n, p in meta_model.named_parameters()} == before
    assert not hasattr(meta_model, "peft_config")


def test_prefix_refuses_a_model_without_a_kv_cache_input():
    class NoCache(torch.nn.Module):
        config = AutoConfig.for_model("llama", num_hidden_layers=1, hidden_size=8, num_attention_heads=2)

        def forward(self, input_ids):
            return input_ids

    with pytest.raises(MedtuneError, match="NoCache cannot take prefix tuning .*past_key_values.*use lora"):
        check_adapter_fits(NoCache(), AdapterConfig(method="prefix"))


def test_qlora_is_refused_on_cpu_before_the_output_holds_anything(tiny_dir, data, tmp_path):
    out = tmp_path / "qlora"
    cfg = config(tiny_dir, data, out, adapter={"method": "qlora", "bits": 4}, train={"max_steps": 1})
    with pytest.raises(MedtuneError, match="needs a CUDA GPU and bitsandbytes; this run is on cpu"):
        run_stage(cfg, quiet=True)
    assert not out.exists() or {p.name for p in out.iterdir()} <= {"config.yaml"}
    with pytest.raises(MedtuneError, match="qlora needs a base loaded in 4/8 bits"):
        apply_adapter(base_model(tiny_dir), AdapterConfig(method="qlora"))
