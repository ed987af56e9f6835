"""vLLM backend: refused clearly without a GPU; on a GPU with vLLM, same greedy text as HF,
streaming and adapters by name."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers.cli import assert_one_line_error, medtune


def has_vllm_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def test_vllm_backend_is_refused_with_a_reason_on_this_machine(tiny_dir):
    if has_vllm_gpu():
        pytest.skip("a GPU with vLLM is present: the GPU tests below run instead")
    proc = medtune("serve", "api", "--model", tiny_dir, "--backend", "vllm")
    assert_one_line_error(proc, "--backend vllm needs")


def test_tensor_parallel_size_needs_vllm(tiny_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    proc = medtune("infer", "--model", tiny_dir, "--input", tmp_path / "in.jsonl", "--output",
                   tmp_path / "o.jsonl", "--tensor-parallel-size", "2")
    assert_one_line_error(proc, "--tensor-parallel-size needs --backend vllm")


@pytest.mark.gpu
@pytest.mark.skipif(not has_vllm_gpu(), reason="needs a CUDA GPU and the vllm package")
def test_vllm_matches_hf_greedy_and_streams(tmp_path):
    from medtune.inference.engines import HFEngine
    from medtune.inference.settings import GenerationSettings
    from medtune.inference.vllm_engine import VLLMEngine
    from medtune.models.tiny import TinySpec, build_tiny

    path = build_tiny(tmp_path / "m", TinySpec(hidden=256, layers=2, heads=4, kv_heads=2, vocab_size=1000))
    hf = HFEngine.load(path, device="cuda", dtype="float32")
    vl = VLLMEngine.load(path, dtype="float32")
    prompts = [hf.encode_chat([{"role": "user", "content": q}]) for q in ("高血压有哪些症状？", "fever")]
    assert prompts == [vl.encode_chat([{"role": "user", "content": q}]) for q in ("高血压有哪些症状？", "fever")]
    params = GenerationSettings(max_new_tokens=16)
    want = [c.completion_tokens for c in hf.generate(prompts, params)]
    pieces = {}
    got = vl.generate(prompts, params, on_text=lambda row, delta, finish: pieces.setdefault(row, []).append(delta))
    assert [c.completion_tokens for c in got] == want
    assert ["".join(pieces[i]) for i in range(2)] == [c.text for c in got]
