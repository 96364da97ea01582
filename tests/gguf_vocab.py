"""Write a Hugging Face tokenizer.json from a byte-level BPE GGUF's own vocabulary (tests only).

The remote engine accepts a `tokenizer.json` as well as a GGUF; to check both give the same ids without a
download, the test builds the tokenizer.json from the SmolLM2 GGUF the test suite already ships: tokens and
merges read from the GGUF key-value header, control tokens (token type 3) as special added tokens.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_metadata(path: Path, wanted: set[str]) -> dict:
    """The GGUF key-values named in `wanted` (arrays as lists); the header is read, the tensors never."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, _tensors, count = struct.unpack("<IQQ", f.read(20))

        def string() -> str:
            (length,) = struct.unpack("<Q", f.read(8))
            return f.read(length).decode("utf-8", errors="surrogateescape")

        def value(kind: int):
            if kind == 8:
                return string()
            if kind == 9:
                item_kind, n = struct.unpack("<IQ", f.read(12))
                return [value(item_kind) for _ in range(n)]
            fmt = _SCALARS[kind]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        found = {}
        for _ in range(count):
            key = string()
            (kind,) = struct.unpack("<I", f.read(4))
            data = value(kind)
            if key in wanted:
                found[key] = data
        return found


def write_tokenizer_json(gguf: Path, out: Path) -> Path:
    meta = read_metadata(gguf, {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                                "tokenizer.ggml.eos_token_id"})
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE (gpt2) vocabularies are converted")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == 3]
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]]},
    }
    out.write_text(json.dumps(document), encoding="utf-8")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if eos is not None:
        out.with_name("tokenizer_config.json").write_text(json.dumps({"eos_token": tokens[eos]}), encoding="utf-8")
    return out
