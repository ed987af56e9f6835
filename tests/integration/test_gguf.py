"""`medtune export gguf`: tensors, metadata and tokenizer read back from the file; llama.cpp's rope
layout checked with a numpy forward pass; Ollama Go templates rendered and compared with Jinja."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from medtune.cli.main import main
from medtune.data.tokenize.templates import render, template_source
from medtune.errors import MedtuneError
from medtune.export.gguf import (
    export_gguf,
    gguf_tensor_name,
    llama_permute,
    llama_unpermute,
    read_gguf_metadata,
    read_gguf_tensors,
)
from medtune.export.ollama import GO_TEMPLATES, go_template, modelfile_text, write_modelfile
from medtune.models.load import load_model, load_tokenizer
from tests.conftest import CONVERSATIONS

CONTROL, NORMAL = 3, 1  # gguf.TokenType


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny llama and qwen2 with sharp attention (q/k scaled up): rope then moves logits a lot, so a
    wrong q/k layout cannot hide inside a tolerance."""
    from transformers import AutoModelForCausalLM

    from medtune.models.tiny import TinySpec, build_tiny

    dirs = {}
    for seed, arch in enumerate(["llama", "qwen2"]):
        out = build_tiny(tmp_path_factory.mktemp(arch) / arch,
                         TinySpec(arch=arch, hidden=32, layers=2, heads=4, kv_heads=2, vocab_size=600, seed=seed))
        model = AutoModelForCausalLM.from_pretrained(out)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "q_proj" in name or "k_proj" in name:
                    param.mul_(12)
        model.save_pretrained(out)
        dirs[arch] = out
    return dirs


def hf_weights(model_dir) -> dict:
    model = load_model(str(model_dir), "float32", "cpu")
    return {k: v.numpy() for k, v in model.state_dict().items()}, model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_every_tensor_read_back_equals_hf_weights(model_dirs, tmp_path, arch, dtype):
    summary = export_gguf(str(model_dirs[arch]), str(tmp_path / "m.gguf"), dtype)
    weights, model = hf_weights(model_dirs[arch])
    got = read_gguf_tensors(summary.path)
    expected = {gguf_tensor_name(k) for k in weights if k != "lm_head.weight"}  # tied: no output.weight
    assert set(got) == expected and summary.tensors == len(expected) == (26 if arch == "qwen2" else 20)
    assert "output.weight" not in got and "blk.1.ffn_down.weight" in got
    heads = {"attn_q": model.config.num_attention_heads, "attn_k": model.config.num_key_value_heads}
    for hf_name, want in weights.items():
        if hf_name == "lm_head.weight":
            continue
        name = gguf_tensor_name(hf_name)
        data = got[name]
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        if arch == "llama" and kind in heads:
            assert not np.array_equal(data, want) or want.ndim == 1  # the permutation was applied
            data = llama_unpermute(data, heads[kind])
        if dtype == "f32" or want.ndim == 1:  # 1-D tensors are always f32
            np.testing.assert_array_equal(data, want, err_msg=name)
        elif dtype == "f16":
            np.testing.assert_array_equal(data, want.astype(np.float16).astype(np.float32), err_msg=name)
        else:  # q8_0: per block of 32, half a step of max|w|/127 plus the f16 rounding of that step
            step = np.abs(want).reshape(-1, 32).max(1, keepdims=True) / 127
            assert (np.abs(data - want).reshape(-1, 32) <= step * (0.5 + 127 * 2**-11) + 1e-7).all(), name
            assert not np.array_equal(data, want)


def test_untied_output_is_written(model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"], tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight * 2)
    model.save_pretrained(tmp_path / "untied")
    load_tokenizer(str(model_dirs["qwen2"])).save_pretrained(tmp_path / "untied")
    got = read_gguf_tensors(export_gguf(str(tmp_path / "untied"), str(tmp_path / "u.gguf"), "f32").path)
    np.testing.assert_array_equal(got["output.weight"], got["token_embd.weight"] * 2)
    assert len(got) == 27


def test_llama_permutation_matches_llama_cpp_golden():
    rows = np.arange(8, dtype=np.float32)[:, None]
    # one head of dim 8: HF pairs (0,4),(1,5),... become adjacent rows, as llama.cpp's LlamaModel.permute
    assert llama_permute(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert llama_permute(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    np.testing.assert_array_equal(llama_unpermute(llama_permute(rows, 2), 2), rows)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_metadata_and_tokenizer(model_dirs, tmp_path, arch):
    path = export_gguf(str(model_dirs[arch]), str(tmp_path / "m.gguf"), "f16").path
    meta = read_gguf_metadata(path)
    tok = load_tokenizer(str(model_dirs[arch]))
    cfg = load_model(str(model_dirs[arch]), "float32", "cpu").config
    assert meta["general.architecture"] == arch and meta["general.file_type"] == 1  # MOSTLY_F16
    hparams = {"context_length": 2048, "embedding_length": 32, "block_count": 2, "feed_forward_length": 128,
               "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 8,
               "rope.freq_base": 10000.0, "vocab_size": 600}
    assert {k: meta[f"{arch}.{k}"] for k in hparams} == hparams
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert meta["tokenizer.ggml.model"] == "gpt2"
    # transformers' Qwen2Tokenizer splits with Qwen2's regex whatever tokenizer.json says
    assert meta["tokenizer.ggml.pre"] == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]
    assert meta["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(600)))
    assert meta["tokenizer.ggml.token_type"][:5] == [CONTROL] * 4 + [NORMAL]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == 0
    assert meta["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert meta["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tok.chat_template == template_source("chatml")


def gguf_forward(tensors: dict, meta: dict, ids: list[int]) -> np.ndarray:
    """Logits of the GGUF weights computed as llama.cpp does: rope on adjacent pairs (llama) or
    on halves (NeoX mode, qwen2), grouped-query attention, tied output."""
    arch = meta["general.architecture"]
    n_head, n_kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    eps, theta = meta[f"{arch}.attention.layer_norm_rms_epsilon"], meta[f"{arch}.rope.freq_base"]
    x = tensors["token_embd.weight"][ids].astype(np.float64)
    seq, hidden = x.shape
    hd = hidden // n_head
    angle = np.arange(seq)[:, None] * theta ** (-np.arange(0, hd, 2) / hd)[None]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]

    def rope(v):
        a, b = (v[..., 0::2], v[..., 1::2]) if arch == "llama" else (v[..., :hd // 2], v[..., hd // 2:])
        ra, rb = a * cos - b * sin, a * sin + b * cos
        return np.stack([ra, rb], -1).reshape(v.shape) if arch == "llama" else np.concatenate([ra, rb], -1)

    def lin(v, name):
        return v @ tensors[name + ".weight"].T + tensors.get(name + ".bias", 0)

    def norm(v, name):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + eps) * tensors[name + ".weight"]

    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    for layer in range(meta[f"{arch}.block_count"]):
        b = f"blk.{layer}."
        h = norm(x, b + "attn_norm")
        q = rope(lin(h, b + "attn_q").reshape(seq, n_head, hd))
        k = np.repeat(rope(lin(h, b + "attn_k").reshape(seq, n_kv, hd)), n_head // n_kv, 1)
        v = np.repeat(lin(h, b + "attn_v").reshape(seq, n_kv, hd), n_head // n_kv, 1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        att = np.einsum("hqk,khd->qhd", p / p.sum(-1, keepdims=True), v).reshape(seq, hidden)
        x = x + lin(att, b + "attn_output")
        h = norm(x, b + "ffn_norm")
        gate = lin(h, b + "ffn_gate")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(h, b + "ffn_up"), b + "ffn_down")
    return norm(x, "output_norm") @ tensors.get("output.weight", tensors["token_embd.weight"]).T


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_weights_in_llama_cpp_layout_give_hf_logits(model_dirs, tmp_path, arch):
    path = export_gguf(str(model_dirs[arch]), str(tmp_path / "m.gguf"), "f32").path
    tok = load_tokenizer(str(model_dirs[arch]))
    model = load_model(str(model_dirs[arch]), "float32", "cpu")
    ids = tok.apply_chat_template(CONVERSATIONS[1], tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    tensors, meta = read_gguf_tensors(path), read_gguf_metadata(path)
    got = gguf_forward(tensors, meta, ids)
    assert np.abs(got - want).max() < 1e-4
    if arch == "llama":  # without the permutation llama.cpp's rope would compute something else
        for name in [n for n in tensors if ".attn_q." in n or ".attn_k." in n]:
            heads = meta["llama.attention.head_count" + ("_kv" if ".attn_k." in name else "")]
            tensors[name] = llama_unpermute(tensors[name], heads)
        assert np.abs(gguf_forward(tensors, meta, ids) - want).max() > 0.1


def test_adapter_dir_is_merged_before_export(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(tiny_dir)
    peft_model.save_pretrained(tmp_path / "adapter")
    load_tokenizer(str(tiny_dir)).save_pretrained(tmp_path / "adapter")
    got = read_gguf_tensors(export_gguf(str(tmp_path / "adapter"), str(tmp_path / "a.gguf"), "f32").path)
    merged, _ = hf_weights(tmp_path / "adapter")
    base, _ = hf_weights(tiny_dir)
    down = "model.layers.0.mlp.down_proj.weight"
    np.testing.assert_array_equal(got["blk.0.ffn_down.weight"], merged[down])
    assert np.abs(merged[down] - base[down]).max() > 1e-3  # the adapter changed the exported weights


# ---- Ollama: a tiny interpreter for the subset of Go templates the Modelfiles use ----

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:\\.|[^"\\])*"|-?\d+|[$.\w]+)')


def go_render(template: str, messages: list[dict]) -> str:
    """Render ``template`` as Go's text/template would with Ollama's ``.Messages`` data."""
    nodes, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip() if trim_next else text
        nodes.append(("text", text.rstrip() if m.group(1) else text))
        nodes.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    nodes.append(("text", tail.lstrip() if trim_next else tail))
    body, rest = _parse(nodes, 0)
    assert rest == len(nodes), "unbalanced {{ end }}"
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    data = {"Messages": msgs}
    return "".join(_exec(body, data, {"$": data}))


def _parse(nodes, i, stop=("end",)):
    """Return (tree, next index) of nodes up to a stop keyword (left for the caller)."""
    tree = []
    while i < len(nodes):
        kind, value = nodes[i]
        if kind == "text":
            tree.append(("text", value))
        elif value == "end" or value == "else" or value.startswith("else if "):
            return tree, i
        elif value.startswith("if "):
            branches, i = [(value[3:], None)], i + 1
            while True:
                block, i = _parse(nodes, i)
                branches[-1] = (branches[-1][0], block)
                keyword = nodes[i][1]
                i += 1
                if keyword == "end":
                    break
                branches.append((keyword[8:] if keyword.startswith("else if ") else "true", None))
            tree.append(("if", branches))
            continue
        elif value.startswith("range "):
            names, expr = value[6:].split(":=")
            block, i = _parse(nodes, i + 1)
            tree.append(("range", [n.strip() for n in names.split(",")], expr.strip(), block))
        else:
            tree.append(("out", value))
        i += 1
    return tree, i


def _exec(tree, dot, env):
    for node in tree:
        if node[0] == "text":
            yield node[1]
        elif node[0] == "out":
            yield str(_eval(node[1], dot, env))
        elif node[0] == "if":
            for cond, block in node[1]:
                if cond == "true" or _truthy(_eval(cond, dot, env)):
                    yield from _exec(block, dot, env)
                    break
        else:
            _, (index_var, elem_var), expr, block = node
            for i, item in enumerate(_eval(expr, dot, env)):
                yield from _exec(block, item, {**env, index_var: i, elem_var: item})


def _truthy(value) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


FUNCS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not _truthy(a),
    "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
    "len": len, "slice": lambda x, i: x[i:], "index": lambda x, i: x[i],
}


def _eval(expr: str, dot, env):
    tokens = _TOKEN.findall(expr)
    value, rest = _command(tokens, dot, env)
    assert not rest, f"cannot parse {expr!r}"
    return value


def _command(tokens, dot, env):
    """Evaluate a command (function call or single operand) up to ')' or the end."""
    if tokens[0] not in FUNCS:
        return _operand(tokens, dot, env)
    name, tokens, args = tokens[0], tokens[1:], []
    while tokens and tokens[0] != ")":
        arg, tokens = _operand(tokens, dot, env)
        args.append(arg)
    return FUNCS[name](*args), tokens


def _operand(tokens, dot, env):
    token, tokens = tokens[0], tokens[1:]
    if token == "(":
        value, tokens = _command(tokens, dot, env)
        tokens = tokens[1:]  # ")"
        while tokens and tokens[0].startswith(".") and tokens[0] != ".":
            value, tokens = value[tokens[0][1:]], tokens[1:]
        return value, tokens
    if token.startswith('"'):
        return json.loads(token), tokens
    if re.fullmatch(r"-?\d+", token):
        return int(token), tokens
    head, *fields = token.split(".")
    value = env[head] if head.startswith("$") else dot
    for field in fields:
        if field:
            value = value[field]
    return value, tokens


def ends_with_user(conversation):
    return conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation


def test_go_interpreter_follows_go_semantics():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    tpl = ('{{- range $i, $m := .Messages }}[{{ $i }}:{{ .Role }}]{{ end -}}\n  '
           '{{ if eq (index $.Messages 0).Role "user" }}no{{ else if (and 1 0) }}no{{ else }}yes{{ end }}'
           '{{ if eq (len (slice .Messages 1)) 1 }}!{{ end }}')
    assert go_render(tpl, msgs) == "[0:system][1:user]yes!"


@pytest.mark.parametrize("name", GO_TEMPLATES)
def test_go_template_renders_what_jinja_renders(name):
    tpl = go_template(name, "<s>", "</s>")
    for conversation in [CONVERSATIONS[0], CONVERSATIONS[1], CONVERSATIONS[2],
                         [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "头痛怎么办？"}]]:
        for upto in range(1, len(conversation) + 1):
            msgs = conversation[:upto]
            if msgs[-1]["role"] != "user":
                continue
            want = render(template_source(name), msgs, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
            assert go_render(tpl, msgs) == want, (name, msgs)


@pytest.mark.parametrize("name", ["llama2", "llama3", "llama3.0"])
def test_go_template_leaves_bos_to_a_tokenizer_that_adds_it(name):
    msgs = CONVERSATIONS[1][:4] + [{"role": "user", "content": "还有呢？"}]
    want = render(template_source(name), msgs, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    got = go_render(go_template(name, "<s>", "</s>", adds_bos=True), msgs)
    assert want.startswith("<s>") and got == want[len("<s>"):]


def test_trailing_assistant_message_is_left_open_for_ollama_to_continue():
    msgs = CONVERSATIONS[0]
    assert go_render(go_template("chatml"), msgs).endswith("<|im_start|>assistant\n" + msgs[1]["content"])


def test_modelfile_for_chatml(tiny_dir, tmp_path):
    tok = load_tokenizer(str(tiny_dir))
    (tmp_path / "m.gguf").write_bytes(b"")
    out = write_modelfile(tmp_path / "m.gguf", tok, tmp_path / "m.Modelfile")
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[1] == "FROM ./m.gguf"
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == go_template("chatml")
    assert go_render(template, CONVERSATIONS[0][:1]) == tok.apply_chat_template(
        CONVERSATIONS[0][:1], tokenize=False, add_generation_prompt=True)
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert modelfile_text(tmp_path / "m.gguf", tok, tmp_path / "sub" / "Modelfile").splitlines()[1] == "FROM ../m.gguf"
    with pytest.raises(MedtuneError, match="exists"):
        write_modelfile(tmp_path / "m.gguf", tok, out)


def test_custom_template_is_refused_for_ollama(tiny_dir):
    tok = load_tokenizer(str(tiny_dir))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(MedtuneError, match="no Ollama"):
        modelfile_text("m.gguf", tok, "Modelfile")
    with pytest.raises(MedtuneError, match="no Ollama"):
        go_template("chatglm3")


def test_cli_writes_gguf_and_modelfile(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tiny.gguf"
    cmd = [sys.executable, "-m", "medtune", "export", "gguf", "--model", str(tiny_dir), "-o", str(out),
           "--dtype", "q8_0", "--modelfile"]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out} (" in run.stdout and "20 tensors, q8_0, arch llama" in run.stdout
    assert read_gguf_metadata(out)["general.file_type"] == 7  # MOSTLY_Q8_0
    assert "FROM ./tiny.gguf" in (tmp_path / "tiny.Modelfile").read_text(encoding="utf-8")
    assert main(cmd[3:]) == 2  # in process from here: each subprocess pays torch's import again
    assert "exists; choose another name or pass --overwrite" in capsys.readouterr().err
    assert main(cmd[3:] + ["--overwrite"]) == 0


def test_cli_refusals(tiny_dir, tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases = [(["--model", str(tmp_path / "missing")], "not found"),
             (["--model", str(gpt2)], "is a gpt2 model; GGUF export supports llama, qwen2"),
             (["--model", str(tmp_path)], "no config.json")]
    for args, message in cases:
        assert main(["export", "gguf", *args, "-o", str(tmp_path / "x.gguf")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.gguf").exists()
    custom = tmp_path / "custom"
    tok = load_tokenizer(str(tiny_dir))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    load_model(str(tiny_dir), "float32", "cpu").save_pretrained(custom)
    tok.save_pretrained(custom)
    assert main(["export", "gguf", "--model", str(custom), "-o", str(tmp_path / "c.gguf"), "--modelfile"]) == 2
    assert "no Ollama (Go) form" in capsys.readouterr().err and not (tmp_path / "c.gguf").exists()
    with pytest.raises(MedtuneError, match="dtype 'q4_k'"):
        export_gguf(str(tiny_dir), str(tmp_path / "q.gguf"), "q4_k")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llama_cpp"), reason="llama-cpp-python not installed")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-3), ("f16", 3e-3), ("q8_0", 5e-2)])
def test_llama_cpp_reproduces_transformers(model_dirs, tmp_path, monkeypatch, arch, dtype, tolerance):
    import llama_cpp.llama_cpp as api
    from llama_cpp import Llama

    default_params = api.llama_model_default_params

    def without_repacking():  # ggml's AMX repack kernels trap (SIGILL) where AMX is reported but not enabled
        params = default_params()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(api, "llama_model_default_params", without_repacking)
    path = export_gguf(str(model_dirs[arch]), str(tmp_path / "m.gguf"), dtype).path
    tok = load_tokenizer(str(model_dirs[arch]))
    model = load_model(str(model_dirs[arch]), "float32", "cpu")
    prompt = tok.apply_chat_template(CONVERSATIONS[1][:2], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, seed=0, n_threads=2)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(np.asarray(llm.scores[:len(ids)]) - want).max() < tolerance
    hf = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    llm.reset()
    ours = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        ours.append(token)
        if len(ours) == len(hf):
            break
    assert len(hf) >= 8 and ours == hf  # hf may stop early at an end-of-turn token
