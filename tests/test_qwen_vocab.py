"""The Qwen2.5 tokenizer files the tests build: they agree with tiktoken, and they are what Qwen2.5 ships."""

from __future__ import annotations

import socket
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import qwen_vocab as qv
from tests.support.qwen_texts import BASES, HOSTILE, TEXTS

# Text a user might paste: any Unicode, and that weighted towards what breaks BPE pre-tokenizers: chat markers,
# added-token strings, whitespace runs, digits, CJK, emoji, combining marks.
PIECES = st.sampled_from([text for text, _, _ in qv.ADDED_TOKENS] + [
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "'s", "'LL", "123", "3.5", "你好", "世界", "🙂", "👨‍👩‍👧",
    "e\u0301", "<|", "|>", "<", ">", "/", "im_start", "Q:", "A:", "def", "    ", "café", "\x00", "\ufeff"])
TEXT = st.lists(st.one_of(st.text(max_size=12), PIECES), max_size=12).map("".join)
HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_the_corpus_is_a_few_hundred_varied_texts():
    assert len(TEXTS) >= 300 and len(set(TEXTS)) == len(TEXTS)
    for sample in ("你好", "🙂", "def ", "<|im_start|>", "<tool_call>", "<|fim_prefix|>", "\n\n\n", "\t\t"):
        assert any(sample in text for text in BASES), sample


def test_the_gguf_agrees_with_tiktoken_on_the_corpus(qwen_gguf_path):
    assert qv.gguf_disagreements(qwen_gguf_path, TEXTS) == []


def test_the_tokenizer_json_agrees_with_tiktoken_on_the_corpus(qwen_tokenizer_json_path):
    assert qv.tokenizer_json_disagreements(qwen_tokenizer_json_path, TEXTS) == []


@HYPOTHESIS
@given(text=TEXT)
def test_the_gguf_agrees_with_tiktoken_on_generated_text(qwen, text):
    assert qwen.tokenize(text) == qv.gguf_reference_ids(text)
    assert qwen.detokenize(qwen.tokenize(text)) == text


@pytest.fixture(scope="module")
def hf_tokenizer(qwen_tokenizer_json_path):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(qwen_tokenizer_json_path))
    tokenizer.encode_special_tokens = True
    return tokenizer


@HYPOTHESIS
@given(text=TEXT)
def test_the_tokenizer_json_agrees_with_tiktoken_on_generated_text(hf_tokenizer, text):
    assert qv.hf_ids(hf_tokenizer, text) == qv.hf_reference_ids(text)


def test_the_reference_tells_the_files_apart_where_qwen_does():
    """The two files differ exactly where Qwen2.5's do: NFC, and added tokens that llama.cpp types as control but
    the tokenizer.json does not flag special (the FIM family). Without this, the two references could be one."""
    assert qv.gguf_reference_ids("<|fim_prefix|>") != [qv.ADDED_IDS["<|fim_prefix|>"]]
    assert qv.hf_reference_ids("<|fim_prefix|>") == [qv.ADDED_IDS["<|fim_prefix|>"]]
    assert qv.gguf_reference_ids("e\u0301") != qv.hf_reference_ids("e\u0301") == qv.gguf_reference_ids("é")
    for text in ("<tool_call>", "</tool_call>"):  # plain added tokens: matched in plain text by both
        assert qv.gguf_reference_ids(text) == qv.hf_reference_ids(text) == [qv.ADDED_IDS[text]]
    for text in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):  # control: never matched in plain text
        assert qv.ADDED_IDS[text] not in qv.gguf_reference_ids(text) + qv.hf_reference_ids(text)


def test_the_two_files_differ_only_there(qwen, hf_tokenizer):
    """For the remote engine: on every corpus text that is NFC and holds no FIM-family string, the tokenizer.json
    (encode_special_tokens on) gives llama.cpp's ids; where they differ, it is for one of those two reasons."""
    fim_family = [text for text in qv.HF_NON_SPECIAL if text not in qv.GGUF_USER_DEFINED]
    differing = 0
    for text in TEXTS:
        explained = unicodedata.normalize("NFC", text) != text or any(f in text for f in fim_family)
        same = qv.hf_ids(hf_tokenizer, text) == qwen.tokenize(text)
        assert same or explained, text
        differing += not same
    assert differing > 0  # the corpus does reach the differences


def test_the_gguf_is_typed_and_labelled_as_qwen25(qwen_gguf_path, qwen):
    import gguf

    reader = gguf.GGUFReader(qwen_gguf_path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "qwen2"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "qwen2"
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.ggml.bos_token_id") == field("tokenizer.ggml.eos_token_id") == 151643
    assert field("tokenizer.ggml.padding_token_id") == 151643
    assert len(field("tokenizer.ggml.tokens")) == qv.PADDED_VOCAB_SIZE
    assert len(field("tokenizer.ggml.merges")) == 151643 - 256  # one per multi-byte rank
    assert "general.finetune" not in reader.fields and "tokenizer.chat_template" not in reader.fields
    control = {text for text, is_control, _ in qv.ADDED_TOKENS if is_control}
    for text, token_id in qv.ADDED_IDS.items():
        assert qwen.is_control(token_id) == (text in control), text
        assert qwen.token_text(token_id) == text
    assert not qwen.is_control(qwen.tokenize("hello")[0])


def test_the_tokenizer_json_flags_added_tokens_as_qwen25_does(qwen_tokenizer_json_path):
    import json

    data = json.loads(qwen_tokenizer_json_path.read_text())
    added = {token["content"]: (token["id"], token["special"]) for token in data["added_tokens"]}
    assert added == {text: (qv.ADDED_IDS[text], special) for text, _, special in qv.ADDED_TOKENS}
    assert data["normalizer"]["type"] == "NFC"
    assert data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == qv.PAT_STR
    assert len(data["model"]["vocab"]) == 151643 and len(data["model"]["merges"]) == 151643 - 256


def test_merges_are_recovered_as_llama_cpps_converter_does():
    """Each multi-byte rank is the merge of two lower-ranked tokens, in rank order: BPE with these merges is tiktoken."""
    ranks = qv.load_ranks()
    tokens, merges = qv.vocab_and_merges()
    assert sorted(ranks[bytes([b])] for b in range(256)) == list(range(256))
    rank_of = {token: rank for rank, token in enumerate(tokens)}
    for rank, merge in enumerate(merges, start=256):
        left, right = merge.split(" ")
        assert left + right == tokens[rank] and rank_of[left] < rank and rank_of[right] < rank
    assert tokens[ranks[b" the"]] == "\u0120the"


def test_built_files_are_cached_by_package_versions(qwen_vocab_dir, qwen_gguf_path, qwen_tokenizer_json_path):
    from importlib.metadata import version

    assert qwen_gguf_path.parent == qwen_tokenizer_json_path.parent == qwen_vocab_dir
    for package in qv.PACKAGES:
        assert version(package) in qwen_vocab_dir.name
    before = qwen_gguf_path.stat().st_mtime_ns
    calls = []
    assert qv.cached(qwen_vocab_dir, qwen_gguf_path.name, calls.append) == qwen_gguf_path
    assert calls == [] and qwen_gguf_path.stat().st_mtime_ns == before  # built once, reused
    assert not list(qwen_vocab_dir.glob("*.tmp"))


def test_nothing_is_downloaded_to_build_the_reference(monkeypatch):
    """tiktoken is handed the ranks read from the installed package; no socket is opened."""
    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    ranks = qv.load_ranks.__wrapped__()
    assert len(ranks) == 151643
    encoding = qv.reference_encoding.__wrapped__(qv.GGUF_USER_DEFINED)
    assert encoding.decode(encoding.encode_ordinary(HOSTILE[0])) == HOSTILE[0]
