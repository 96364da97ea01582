"""Quality flags on every completion: cheap signals that point a reviewer at likely problems."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

CONTROL_TOKEN_TEXT = re.compile(
    r"<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_(?:turn|image)>|</?tool_call>|</?s>|<bos>|<eos>|<pad>|\[/?INST\]|<<SYS>>",
)
REPETITION_NGRAM = 3
REPETITION_THRESHOLD = 0.5  # share of word 3-grams that repeat an earlier one
REPETITION_MIN_NGRAMS = 8


def leak_markers(stops: Sequence[str]) -> list[str]:
    """The next-example markers of a style: its worded stop strings (`\nQ:` -> `Q:`), without leading whitespace."""
    return sorted({s.lstrip() for s in stops if any(c.isalpha() for c in s)}, key=len, reverse=True)


def trim_leak(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut the completion where it starts the next example in the style's format, which the stops missed.

    A style's format starts an example at a line start (its stops are "\nInstruction:", "\nQ:" ...), so
    a marker counts only right after a newline: a stop such as "\n\n\nQ:" misses "\nQ:", and this
    catches it. A marker in the middle of a line ("Example Sentence: ..." inside an answer) is the
    answer's own text and is kept.
    """
    cut = None
    for marker in leak_markers(stops):
        match = re.search("(?<=\n)" + re.escape(marker), text)
        if match and (cut is None or match.start() < cut):
            cut = match.start()
    if cut is None:
        return text, False
    return text[:cut].rstrip(), True


def repetition_ratio(text: str, n: int = REPETITION_NGRAM) -> float:
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < REPETITION_MIN_NGRAMS:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def quality_flags(text: str, finish_reason: str, leaked: bool = False) -> list[str]:
    flags = []
    if not text.strip():
        flags.append("empty")
    if finish_reason == "length":
        flags.append("truncated")
    if repetition_ratio(text) > REPETITION_THRESHOLD:
        flags.append("repetition")
    if leaked:
        flags.append("leaked")
    if CONTROL_TOKEN_TEXT.search(text):
        flags.append("control_token_text")
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t\r" for c in text):
        flags.append("non_printable")
    return flags


ALL_FLAGS = ("empty", "truncated", "repetition", "leaked", "control_token_text", "non_printable", "control_token")
