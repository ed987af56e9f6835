"""Write a llama.cpp / Ollama GGUF file from a llama- or qwen2-architecture HF model.

Example::

    medtune export gguf --model runs/sft-merged -o runs/sft.gguf --dtype q8_0 --modelfile
    python -c "from medtune.export.gguf import read_gguf_metadata as m; print(m('runs/sft.gguf')['general.architecture'])"

What llama.cpp's ``convert_hf_to_gguf.py`` does for these two architectures, for byte-level BPE
tokenizers (Llama 3, Qwen2, medtune's tiny models): llama.cpp tensor names; the Q/K row permutation
of the llama architecture (llama.cpp rotates adjacent pairs, HF rotates halves; qwen2 runs in NeoX
mode and is written as is); ``output.weight`` left out for tied embeddings (llama.cpp then reuses
``token_embd``); 1-D tensors (norms, biases) always f32; q8_0 falls back to f16 for rows that are
not a multiple of 32. SentencePiece tokenizers (Llama 2) and rope scaling are refused: use
llama.cpp's own converter for those. An adapter dir is merged into its base first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.files import atomic_output

ARCHS = {"llama": "llama", "qwen2": "qwen2"}  # HF model_type -> GGUF general.architecture
DTYPES = ("f32", "f16", "q8_0")

# HF names inside model.layers.N -> llama.cpp's blk.N names (an explicit table: anything else is refused).
_BLOCK_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# Pre-tokenizer regexes llama.cpp knows, by its tokenizer.ggml.pre name.
_PRE_REGEX = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


@dataclass
class GGUFSummary:
    path: Path
    arch: str
    dtype: str
    tensors: int
    bytes: int

    def line(self) -> str:
        """Return the one-line summary the CLI prints."""
        return (f"wrote {self.path} ({self.bytes / 2**20:.1f} MiB, {self.tensors} tensors, {self.dtype}, "
                f"arch {self.arch})")


def export_gguf(model_dir: str, out_file: str, dtype: str = "f16", overwrite: bool = False) -> GGUFSummary:
    """Write ``model_dir`` (a model or LoRA adapter dir) to the GGUF file ``out_file``; return a summary."""
    import importlib.util

    from medtune.models.load import load_model, load_tokenizer

    if dtype not in DTYPES:
        raise MedtuneError(f"GGUF dtype '{dtype}' is not supported (choose from {', '.join(DTYPES)})")
    if importlib.util.find_spec("gguf") is None:
        raise MedtuneError("GGUF export needs the gguf package: pip install 'medtune[export]'")
    arch = gguf_arch(model_dir)
    out = claim_file(out_file, overwrite)
    tokenizer = load_tokenizer(model_dir)
    check_tokenizer(tokenizer, model_dir)
    model = load_model(model_dir, "float32", "cpu")  # an adapter dir comes back merged
    with atomic_output(out) as partial:  # a failed export never leaves a truncated .gguf
        count = _write(partial, model, tokenizer, arch, dtype, Path(model_dir).resolve().name)
    return GGUFSummary(out, arch, dtype, count, out.stat().st_size)


def claim_file(out_file: str, overwrite: bool) -> Path:
    """Return ``out_file`` as a Path, refusing an existing file unless ``overwrite``."""
    out = Path(out_file)
    if out.is_dir():
        raise MedtuneError(f"output '{out}' is a directory; give a file name such as {out / 'model.gguf'}")
    if out.exists() and not overwrite:
        raise MedtuneError(f"output '{out}' exists; choose another name or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def gguf_arch(model_dir: str) -> str:
    """Return the GGUF architecture of ``model_dir`` (an adapter dir: of its base), refusing others."""
    from medtune.models.load import adapter_base, check_model_path, is_adapter_dir

    check_model_path(model_dir)
    if is_adapter_dir(model_dir):
        from medtune.export.merge import _check_mergeable

        _check_mergeable(model_dir)  # prefix-tuning adapters cannot be folded into weights
        return gguf_arch(adapter_base(model_dir))  # a chain of adapters ends at a full model
    source = model_dir
    config = Path(source) / "config.json"
    if not config.is_file():
        raise MedtuneError(f"'{source}' has no config.json (GGUF export needs a local model dir)")
    cfg = json.loads(config.read_text(encoding="utf-8"))
    kind = cfg.get("model_type", "?")
    if "quantization_config" in cfg:
        raise MedtuneError(f"'{source}' is a quantized checkpoint; export the unquantized model "
                           "(GGUF has its own quantization: --dtype q8_0)")
    if kind not in ARCHS:
        raise MedtuneError(f"'{source}' is a {kind} model; GGUF export supports {', '.join(ARCHS)} "
                           "(use llama.cpp's convert_hf_to_gguf.py for other architectures)")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise MedtuneError(f"'{source}' uses rope scaling ({rope}); not supported by this exporter "
                           "(use llama.cpp's convert_hf_to_gguf.py)")
    return ARCHS[kind]


def check_tokenizer(tokenizer, where: str) -> None:
    """Refuse tokenizers that are not byte-level BPE (llama.cpp's "gpt2" tokenizer model)."""
    spec = _tokenizer_json(tokenizer)
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise MedtuneError(f"'{where}': only byte-level BPE tokenizers (Llama 3, Qwen2, medtune tiny) export to "
                           "GGUF here; for SentencePiece tokenizers use llama.cpp's convert_hf_to_gguf.py")
    pre_tokenizer_name(spec, where)


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise MedtuneError("GGUF export needs a fast (tokenizer.json) tokenizer")
    return json.loads(backend.to_str())


def pre_tokenizer_name(spec: dict, where: str = "tokenizer") -> str:
    """Return llama.cpp's ``tokenizer.ggml.pre`` for a tokenizer.json spec (refuse unknown splits)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own split is the GPT-2 regex
    splits = [s["pattern"].get("Regex") for s in steps if s.get("type") == "Split"]
    if len(splits) == 1 and splits[0] in _PRE_REGEX:
        return _PRE_REGEX[splits[0]]
    raise MedtuneError(f"'{where}': pre-tokenizer {json.dumps(pre)[:120]} is not one llama.cpp is known to "
                       "handle here; use llama.cpp's convert_hf_to_gguf.py")


def llama_permute(weights, n_head: int):
    """Return q/k rows reordered from HF's rotate-half layout to llama.cpp's adjacent pairs.

    Same as ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py (works on weights and biases).
    """
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama_unpermute(weights, n_head: int):
    """Return the HF layout of rows that ``llama_permute`` reordered."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensor_name(hf_name: str) -> str:
    """Return llama.cpp's name for an HF llama/qwen2 tensor name; refuse names with none."""
    top = hf_name.rsplit(".", 1)
    if top[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[top[0]]}.{top[1]}"
    match = _BLOCK.match(hf_name)
    if not match or match.group(2) not in _BLOCK_NAMES:
        raise MedtuneError(f"tensor '{hf_name}' has no llama.cpp name; this model is not a plain llama/qwen2")
    return f"blk.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{match.group(3)}"


def _hf_tensors(model, arch: str):
    """Yield (llama.cpp name, float32 numpy array) in HF orientation, permuted for llama."""
    cfg = model.config
    tied = getattr(cfg, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        data = tensor.detach().float().cpu().numpy()
        if arch == "llama" and ".self_attn.q_proj." in name:
            data = llama_permute(data, cfg.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in name:
            data = llama_permute(data, cfg.num_key_value_heads)
        yield gguf_tensor_name(name), data


def _encode(data, dtype: str):
    """Return (array to write, GGMLQuantizationType) for one tensor in the requested ``dtype``."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if data.ndim == 1 or dtype == "f32":
        return data.astype(np.float32), Q.F32
    if dtype == "q8_0" and data.shape[-1] % 32 == 0:
        return quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), Q.F16


def _write(path: Path, model, tokenizer, arch: str, dtype: str, name: str) -> int:
    """Write header, metadata and tensors of ``model`` to ``path``; return the tensor count."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_hparams(writer, model.config)
    _write_tokenizer(writer, tokenizer, model.config)
    count = 0
    for tensor_name, data in _hf_tensors(model, arch):
        array, qtype = _encode(data, dtype)
        writer.add_tensor(tensor_name, array, raw_dtype=qtype)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def _write_hparams(writer, cfg) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _write_tokenizer(writer, tokenizer, cfg) -> None:
    spec = _tokenizer_json(tokenizer)
    tokens, types = vocab_tokens(tokenizer, cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    _write_special_ids(writer, tokenizer, cfg)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def vocab_tokens(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Return llama.cpp's token list and token types (ids without a token become ``[PADi]``, unused)."""
    from gguf import TokenType

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise MedtuneError(f"tokenizer has id {max(by_id)} but the model's vocab_size is {vocab_size}; "
                           "resize the embeddings before export")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            special = i in added and added[i].special
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED if i in added
                         else TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _write_special_ids(writer, tokenizer, cfg) -> None:
    """bos/eos/pad ids, whether the tokenizer adds bos/eos itself, and the template's end-of-turn id."""
    from medtune.data.tokenize.templates import stop_strings, template_name

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else cfg.bos_token_id
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(tokenizer_adds_bos(tokenizer))
    writer.add_add_eos_token(tokenizer("a")["input_ids"][-1] == tokenizer.eos_token_id)
    name = template_name(tokenizer.chat_template)
    stops = stop_strings(name) if name not in ("custom", "none") else []
    ids = [tokenizer.convert_tokens_to_ids(s) for s in stops if s in tokenizer.get_vocab()]
    if ids:
        writer.add_eot_token_id(ids[0])  # llama.cpp stops at end-of-turn as well as eos


def tokenizer_adds_bos(tokenizer) -> bool:
    """Return True when ``tokenizer(text)`` starts with bos (llama.cpp's ``add_bos_token``)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def read_gguf_tensors(path) -> dict:
    """Return ``{name: float32 numpy array}`` of a GGUF file, dequantized, in HF (row-major) orientation."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return out


def read_gguf_metadata(path) -> dict:
    """Return ``{key: value}`` of a GGUF file's metadata (strings, numbers, lists)."""
    from gguf import GGUFReader

    out = {}
    for key, field in GGUFReader(str(path)).fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        out[key] = value.tolist() if hasattr(value, "tolist") else value
    return out
