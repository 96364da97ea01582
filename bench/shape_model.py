"""A model of a real model's shape, for timing where its weights cannot be: the same architecture, hyperparameters,
tokenizer, tensors, types and sizes, with weights made of real quantized blocks repeated to fill each tensor.

llama.cpp's speed depends mostly on the shapes and types of the tensors, little on their values: on the bench CPU a
decode step of the embedded model's shape took 0.90-0.93 of the real model's time and batching gained the same to a
few percent (README, Benchmarks, "On a GPU"). Ratios hold; absolute tokens/s are approximate. Its answers are noise
(mostly running to --max-tokens, as the minimal loop's do): use it for throughput, never for text.

It exists because a device machine can be sent 64 MiB and nothing else: the embedded model is 253 MB and the
product's target, Qwen2.5-32B at Q4_K_M, is 20 GB. A pack (a few MB) travels; the model is built where it runs.

  python bench/shape_model.py pack DONOR.gguf PACK.gguf [--meta META.gguf --plan qwen2-q4_k_m]
      the pack: the metadata (DONOR's, or META's: architecture, hyperparameters, tokenizer) and the tensor plan
      (DONOR's own tensors, or --plan built for META's architecture as llama.cpp's Q4_K_M would quantize it),
      with a sample of DONOR's blocks of each type the plan uses and DONOR's small tensors (norms) whole
  python bench/shape_model.py build PACK.gguf MODEL.gguf
      the model: each tensor its own small tensor if the pack holds it, else its type's sample repeated; F32
      tensors with no sample are norms (1.0) or biases (0.0)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

PLAN_KEY = "shape_model.plan"
SAMPLE_PREFIX = "shape_model.sample."
WHOLE_PREFIX = "shape_model.whole."
SAMPLE_BYTES = 2 << 20  # per quantization type: ~14,000 Q4_K blocks, far more than one row of any tensor
WHOLE_BYTES = 64 << 10  # donor tensors this small (norms) travel whole


def tensor_bytes(kind: str, ne: list[int]) -> int:
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    return int(np.prod(ne)) // block_size * type_size


def plan_of(reader: GGUFReader) -> list[tuple[str, str, list[int]]]:
    """(name, type, ne) of each tensor in a GGUF, ne in ggml's order (row length first)."""
    return [(t.name, t.tensor_type.name, [int(n) for n in t.shape]) for t in reader.tensors]


def qwen2_q4_k_m_plan(reader: GGUFReader) -> list[tuple[str, str, list[int]]]:
    """Qwen2's tensors for META's hyperparameters, typed as llama.cpp's quantizer types them for Q4_K_M: Q4_K,
    except output (Q6_K) and attn_v / ffn_down on the layers `use_more_bits` picks (Q6_K); norms and the q/k/v
    biases F32."""
    arch = _value(reader, "general.architecture")
    if arch != "qwen2":
        raise SystemExit(f"--plan qwen2-q4_k_m needs qwen2 metadata (--meta), not {arch}")

    def hp(key: str) -> int:
        return int(_value(reader, f"{arch}.{key}"))

    n_embd, n_layer, n_ff = hp("embedding_length"), hp("block_count"), hp("feed_forward_length")
    head_dim = n_embd // hp("attention.head_count")
    n_kv = hp("attention.head_count_kv") * head_dim
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    def more_bits(i: int) -> bool:  # llama-quant.cpp's use_more_bits
        return i < n_layer // 8 or i >= 7 * n_layer // 8 or (i - n_layer // 8) % 3 == 2

    plan = [("token_embd.weight", "Q4_K", [n_embd, n_vocab]), ("output_norm.weight", "F32", [n_embd]),
            ("output.weight", "Q6_K", [n_embd, n_vocab])]
    for i in range(n_layer):
        wide = "Q6_K" if more_bits(i) else "Q4_K"
        plan += [(f"blk.{i}.{name}", kind, ne) for name, kind, ne in (
            ("attn_norm.weight", "F32", [n_embd]),
            ("attn_q.weight", "Q4_K", [n_embd, n_embd]), ("attn_q.bias", "F32", [n_embd]),
            ("attn_k.weight", "Q4_K", [n_embd, n_kv]), ("attn_k.bias", "F32", [n_kv]),
            ("attn_v.weight", wide, [n_embd, n_kv]), ("attn_v.bias", "F32", [n_kv]),
            ("attn_output.weight", "Q4_K", [n_embd, n_embd]),
            ("ffn_norm.weight", "F32", [n_embd]),
            ("ffn_gate.weight", "Q4_K", [n_embd, n_ff]), ("ffn_up.weight", "Q4_K", [n_embd, n_ff]),
            ("ffn_down.weight", wide, [n_ff, n_embd]))]
    return plan


PLANS = {"qwen2-q4_k_m": qwen2_q4_k_m_plan}


def pack(donor_path: Path, out: Path, meta_path: Path | None, plan_name: str | None) -> None:
    donor = GGUFReader(donor_path)
    meta = GGUFReader(meta_path) if meta_path else donor
    plan = PLANS[plan_name](meta) if plan_name else plan_of(donor)
    writer = GGUFWriter(out, str(_value(meta, "general.architecture")))
    _copy_metadata(meta, writer)
    writer.add_string(PLAN_KEY, json.dumps(plan))
    if plan_name:
        writer.add_uint32("general.file_type", 15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    by_type: dict[str, list] = {}
    for tensor in donor.tensors:
        by_type.setdefault(tensor.tensor_type.name, []).append(tensor)
    needed = {kind for _, kind, _ in plan}
    for kind in sorted(needed - {"F32"}):
        if kind not in by_type:
            raise SystemExit(f"{donor_path} has no {kind} tensor to take blocks from")
        largest = max(by_type[kind], key=lambda t: t.n_bytes)
        block = GGML_QUANT_SIZES[GGMLQuantizationType[kind]][1]
        raw = np.asarray(largest.data).reshape(-1).view(np.uint8)
        start = (raw.size // 2) // block * block  # from the middle: a tensor's first rows can be special
        sample = raw[start:start + SAMPLE_BYTES // block * block]
        writer.add_tensor(SAMPLE_PREFIX + kind, sample.view(np.int8), raw_dtype=GGMLQuantizationType.I8)
    if not plan_name:
        for tensor in donor.tensors:
            if tensor.n_bytes <= WHOLE_BYTES:
                raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
                writer.add_tensor(WHOLE_PREFIX + tensor.name, raw.view(np.int8), raw_dtype=GGMLQuantizationType.I8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build(pack_path: Path, out: Path) -> None:
    packed = GGUFReader(pack_path)
    plan = json.loads(_value(packed, PLAN_KEY))
    stored = {t.name: np.asarray(t.data).reshape(-1).view(np.uint8) for t in packed.tensors}
    writer = GGUFWriter(out, str(_value(packed, "general.architecture")))
    _copy_metadata(packed, writer, skip=(PLAN_KEY,))
    for name, kind, ne in plan:
        qtype = GGMLQuantizationType[kind]
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        shape = [*reversed(ne[1:]), ne[0] // block_size * type_size]  # numpy order, rows in bytes
        writer.add_tensor_info(name, shape, np.dtype(np.uint8), tensor_bytes(kind, ne), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, kind, ne in plan:
        nbytes = tensor_bytes(kind, ne)
        if WHOLE_PREFIX + name in stored:
            data = stored[WHOLE_PREFIX + name]
        elif kind == "F32":
            data = np.full(nbytes // 4, 0.0 if name.endswith(".bias") else 1.0, np.float32).view(np.uint8)
        else:
            data = np.resize(stored[SAMPLE_PREFIX + kind], nbytes)
        if data.size != nbytes:
            raise SystemExit(f"{pack_path}: {name} holds {data.size} bytes, its plan {nbytes}")
        writer.write_tensor_data(data)
    writer.close()


def _value(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, skip: tuple[str, ...] = ()) -> None:
    """Every key-value field but the file's own header fields (and general.architecture, which the writer adds)."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in skip:
            continue
        vtype = GGUFValueType(field.types[0])
        sub_type = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("pack", "build"):
        print((__doc__ or "").strip())
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)

    def option(name: str) -> str | None:
        if name not in argv:
            return None
        if argv.index(name) + 1 >= len(argv):
            raise SystemExit(f"{name} needs a value")
        return argv[argv.index(name) + 1]

    if len(argv) < 3:
        raise SystemExit(f"{argv[0]} needs two paths (--help)")
    if argv[0] == "pack":
        meta, plan = option("--meta"), option("--plan")
        if (meta is None) != (plan is None):  # a plan needs the metadata it is built for, and the other way round
            raise SystemExit("--meta and --plan go together")
        if plan is not None and plan not in PLANS:
            raise SystemExit(f"--plan {plan}: one of {', '.join(PLANS)}")
        pack(Path(argv[1]), Path(argv[2]), Path(meta) if meta else None, plan)
    else:
        build(Path(argv[1]), Path(argv[2]))
    print(f"wrote {argv[2]} ({Path(argv[2]).stat().st_size / 1e6:,.1f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
