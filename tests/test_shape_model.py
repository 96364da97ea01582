"""bench/shape_model.py: the GPU figures are measured on models of a real model's shape, so the shape must be the
real one (tensors, types, sizes, metadata) and the model must run with finite logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import shape_model  # noqa: E402

from gristmill.models import create_engine  # noqa: E402


def test_the_embedded_models_shape_is_its_shape_and_runs(gemma_path, tmp_path):
    pack, model = tmp_path / "gemma.pack.gguf", tmp_path / "gemma-shape.gguf"
    shape_model.main(["pack", str(gemma_path), str(pack)])
    assert pack.stat().st_size < 16 << 20  # what travels: the metadata, a sample a type, the norms
    shape_model.main(["build", str(pack), str(model)])
    assert model.stat().st_size == gemma_path.stat().st_size
    real, shaped = GGUFReader(gemma_path), GGUFReader(model)
    assert shape_model.plan_of(shaped) == shape_model.plan_of(real)
    assert {k: f.contents() for k, f in shaped.fields.items() if not k.startswith("GGUF.")} == {
        k: f.contents() for k, f in real.fields.items() if not k.startswith("GGUF.")}
    norms = [i for i, t in enumerate(real.tensors) if t.n_bytes <= shape_model.WHOLE_BYTES]
    assert norms and all(np.array_equal(shaped.tensors[i].data, real.tensors[i].data) for i in norms)
    big = max(range(len(real.tensors)), key=lambda i: real.tensors[i].n_bytes)  # token_embd: repeated blocks
    assert not np.array_equal(shaped.tensors[big].data, real.tensors[big].data)

    engine = create_engine("llama_cpp", model_path=model, n_ctx=128, n_threads=2)
    try:
        text = "Write one sentence about the sea."
        assert engine.tokenize(text) == engine.tokenize(text)
        ids = engine.tokenize(text)
        llm = engine._llm
        llm.eval(ids)
        logits = np.ctypeslib.as_array(engine._lib.llama_get_logits(llm._ctx.ctx), shape=(engine.n_vocab,))
        assert np.isfinite(logits).all() and logits.std() > 0  # noise, but numbers: the sampler can draw
    finally:
        engine.close()


def test_the_qwen_plan_is_qwen2_5_32b_at_q4_k_m(qwen_gguf_path, gemma_path, tmp_path):
    plan = shape_model.qwen2_q4_k_m_plan(GGUFReader(qwen_gguf_path))
    assert len(plan) == 3 + 64 * 12  # embeddings, output norm, output; per layer 4 projections, 3 biases, 2 norms, 3 FFN
    kinds = {name: kind for name, kind, _ in plan}
    wide = [i for i in range(64) if kinds[f"blk.{i}.ffn_down.weight"] == "Q6_K"]
    assert wide[:8] == list(range(8)) and wide[-8:] == list(range(56, 64)) and 10 in wide and 9 not in wide
    assert [kinds[f"blk.{i}.attn_v.weight"] for i in range(64)] == [kinds[f"blk.{i}.ffn_down.weight"] for i in range(64)]
    size = sum(shape_model.tensor_bytes(kind, ne) for _, kind, ne in plan)
    assert size == pytest.approx(19.85e9, rel=0.002)  # published Qwen2.5-32B Q4_K_M files: 19.85 GB

    pack = tmp_path / "qwen.pack.gguf"
    shape_model.main(["pack", str(gemma_path), str(pack), "--meta", str(qwen_gguf_path), "--plan", "qwen2-q4_k_m"])
    packed = GGUFReader(pack)
    assert packed.fields["tokenizer.ggml.tokens"].contents() == GGUFReader(qwen_gguf_path).fields[
        "tokenizer.ggml.tokens"].contents()
    assert sorted(t.name for t in packed.tensors) == ["shape_model.sample.Q4_K", "shape_model.sample.Q6_K"]
