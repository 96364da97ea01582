"""What an export says of the records it wrote beyond their count: the ones a trainer reads otherwise than the
curator meant, and the flags of an edited record (its edit's, not the model's).

- cut short: an accepted answer the model did not finish (cut at `--max-tokens`: flag `truncated`) and nobody
  edited. A trainer ends every completion with EOS, so each teaches the model to stop mid-sentence.
- control-token text: text such as `<eos>` or `<|im_start|>` in what a trainer tokenizes. gristmill fed it as
  plain text, but a trainer that tokenizes text with special tokens parsed (TRL's SFTTrainer does) reads a
  control token there; `--format tokens` keeps it plain text.

Each is counted in the command's output and listed by id in the manifest; neither is dropped by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from gristmill.app.flags import CONTROL_TOKEN_TEXT, quality_flags

# the flags of how the model's generation went, which an edit replaces along with the text
GENERATION_FLAGS = ("truncated", "leaked", "control_token")
# the keys of each format's record that a trainer tokenizes as text (`tokens` carries ids)
TEXT_KEYS = {
    "native": ("prompt", "response"),
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion"),
    "tokens": (),
}


def edit_flags(edited: str) -> list[str]:
    """The flags of a reviewer's text: those the text itself shows (empty, repetition, control-token text,
    non-printable); the generation's (truncated, leaked, a sampled control token) do not describe it."""
    return quality_flags(edited, "stop")


def excluded_by_edit(row: dict, exclude: tuple[str, ...]) -> bool:
    """An edited record that `--exclude-flag` leaves out: its edit shows an excluded flag. The database's filter
    applies the stored flags to unedited records only (they are the model's text's; an edit's come from here)."""
    edited = row["edited_response"]
    return bool(exclude) and edited is not None and not set(edit_flags(edited)).isdisjoint(exclude)


def _texts(fmt: str, record: dict) -> Iterator[str]:
    if fmt == "messages":
        yield from (message["content"] for message in record["messages"])
    else:
        yield from (record[key] for key in TEXT_KEYS[fmt])


@dataclass
class ExportNotes:
    """Generation ids, each once (a dpo pick is one record per sibling it beat), in the order written."""

    fmt: str
    cut_short: dict[int, None] = field(default_factory=dict)
    control_token_text: dict[int, None] = field(default_factory=dict)

    def see(self, row: dict, record: dict, flags: list[str]) -> None:
        """`row` as read (its edit, its decision for kto), `record` as written, `flags` the stored ones."""
        accepted = row.get("decision", "accept") == "accept"  # kto writes rejects too: a cut reject is fine
        if accepted and row["edited_response"] is None and "truncated" in flags:
            self.cut_short[row["id"]] = None
        if any(CONTROL_TOKEN_TEXT.search(text) for text in _texts(self.fmt, record)):
            self.control_token_text[row["id"]] = None

    def lines(self) -> list[str]:
        """The command's lines: what each count means to a trainer, and the way to leave those records out."""
        out = []
        if self.cut_short:
            out.append(
                f"cut short: {len(self.cut_short):,} accepted answer(s) end where --max-tokens stopped the model "
                "(flag truncated, not edited); a trainer ends each with EOS, teaching the model to stop there "
                "(--exclude-flag truncated leaves them out; the manifest lists their ids)"
            )
        if self.control_token_text:
            out.append(
                f"control-token text: the records of {len(self.control_token_text):,} generation(s) carry text such as "
                "<eos> or <|im_start|>; a trainer that tokenizes text with special tokens parsed reads a control "
                "token there (--format tokens keeps it plain text; the manifest lists their ids)"
            )
        return out

    def manifest(self) -> dict:
        return {"cut_short": list(self.cut_short), "control_token_text": list(self.control_token_text)}
