"""bench/shape_model.py: the GPU figures are measured on models of a real model's shape, so the shape must be the
real one (tensors, types, sizes, metadata) and the model must run with finite logits."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import shape_model  # noqa: E402

from gristmill.models import create_engine  # noqa: E402

pytestmark = pytest.mark.slow  # real GGUF files are read, written and loaded


def finite_logits(model: Path, text: str) -> np.ndarray:
    engine = create_engine("llama_cpp", model_path=model, n_ctx=128, n_threads=2)
    try:
        engine._llm.eval(engine.tokenize(text))
        logits = engine._lib.llama_get_logits_ith(engine._llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(logits, shape=(engine.n_vocab,)).copy()  # the context's memory goes with it
    finally:
        engine.close()


def test_the_embedded_models_shape_is_its_shape_and_runs(gemma_path, tmp_path):
    pack, model = tmp_path / "gemma.pack.gguf", tmp_path / "gemma-shape.gguf"
    shape_model.main(["pack", str(gemma_path), str(pack)])
    assert pack.stat().st_size < 16 << 20  # what travels: the metadata, a sample a type, the norms
    shape_model.main(["build", str(pack), str(model)])
    assert model.stat().st_size == gemma_path.stat().st_size
    real, shaped = GGUFReader(gemma_path), GGUFReader(model)
    assert shape_model.plan_of(shaped) == shape_model.plan_of(real)
    assert {k: f.contents() for k, f in shaped.fields.items() if not k.startswith("GGUF.")} == {
        k: f.contents() for k, f in real.fields.items() if not k.startswith("GGUF.")
    }
    norms = [i for i, t in enumerate(real.tensors) if t.n_bytes <= shape_model.WHOLE_BYTES]
    assert norms and all(np.array_equal(shaped.tensors[i].data, real.tensors[i].data) for i in norms)
    big = max(range(len(real.tensors)), key=lambda i: real.tensors[i].n_bytes)  # token_embd: repeated blocks
    assert not np.array_equal(shaped.tensors[big].data, real.tensors[big].data)
    logits = finite_logits(model, "Write one sentence about the sea.")
    assert np.isfinite(logits).all() and 0 < logits.std() and np.abs(logits).max() < 1e4  # noise, but numbers


def test_the_qwen_plan_is_qwen2_5_32b_at_q4_k_m(qwen_gguf_path):
    plan = shape_model.qwen2_q4_k_m_plan(GGUFReader(qwen_gguf_path))
    # embeddings, output norm, output; a layer: 4 projections, 3 biases, 2 norms, 3 FFN matrices
    assert len(plan) == 3 + 64 * 12
    kinds = {name: kind for name, kind, _ in plan}
    down = [kinds[f"blk.{i}.ffn_down.weight"] for i in range(64)]
    wide = [i for i, kind in enumerate(down) if kind == "Q6_K"]
    assert wide[:8] == list(range(8)) and wide[-8:] == list(range(56, 64)) and 10 in wide and 9 not in wide
    assert [kinds[f"blk.{i}.attn_v.weight"] for i in range(64)] == down  # the same layers get more bits
    size = sum(shape_model.tensor_bytes(kind, ne) for _, kind, ne in plan)
    assert size == pytest.approx(19.85e9, rel=0.002)  # published Qwen2.5-32B Q4_K_M files: 19.85 GB


def test_a_planned_qwen2_model_builds_loads_and_runs(qwen_gguf_path, gemma_path, tmp_path):
    """The plan behind the 32B figures, on a 2-layer 256-wide Qwen2 (the same code path, a 55 MB file): norms 1.0,
    biases 0.0, Q4_K and Q6_K blocks from the Gemma donor, loaded by llama.cpp and decoding finite logits."""
    vocab = GGUFReader(qwen_gguf_path)
    meta = tmp_path / "qwen2-tiny.meta.gguf"
    small = {"context_length": 512, "embedding_length": 256, "block_count": 2, "feed_forward_length": 512,
             "attention.head_count": 4, "attention.head_count_kv": 2}
    writer = GGUFWriter(meta, "qwen2")
    shape_model._copy_metadata(vocab, writer, skip=tuple(f"qwen2.{key}" for key in small))
    for key, value in small.items():
        writer.add_uint32(f"qwen2.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    pack, model = tmp_path / "qwen.pack.gguf", tmp_path / "qwen-tiny.gguf"
    shape_model.main(["pack", str(gemma_path), str(pack), "--meta", str(meta), "--plan", "qwen2-q4_k_m"])
    packed = GGUFReader(pack)
    assert packed.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert sorted(t.name for t in packed.tensors) == ["shape_model.sample.Q4_K", "shape_model.sample.Q6_K"]
    shape_model.main(["build", str(pack), str(model)])
    built = GGUFReader(model)
    assert built.fields["tokenizer.ggml.tokens"].contents() == vocab.fields["tokenizer.ggml.tokens"].contents()
    tensors = {t.name: t for t in built.tensors}
    assert np.all(tensors["blk.1.attn_norm.weight"].data == 1.0) and np.all(tensors["blk.1.attn_q.bias"].data == 0)
    assert [t.tensor_type.name for t in built.tensors] == [kind for _, kind, _ in shape_model.plan_of(built)]
    logits = finite_logits(model, "Write one sentence about the sea.")
    assert np.isfinite(logits).all() and 0 < logits.std() and np.abs(logits).max() < 1e4


def test_a_plan_refuses_the_wrong_metadata(gemma_path, tmp_path):
    with pytest.raises(SystemExit, match="go together"):
        shape_model.main(["pack", str(gemma_path), str(tmp_path / "p.gguf"), "--plan", "qwen2-q4_k_m"])
    with pytest.raises(SystemExit, match="needs qwen2 metadata"):
        shape_model.main(["pack", str(gemma_path), str(tmp_path / "p.gguf"), "--meta", str(gemma_path),
                          "--plan", "qwen2-q4_k_m"])
