"""The training shapes TRL reads, derived from the review log: prompt-completion, dpo, kto and tokens.

Field names follow TRL's dataset-formats doc. `prompt` is the style's *training* prompt (the part of
`formatted_text` before the answer, from the run's stored style), never the few-shot prompt that was
fed; the answer is the completion. Each record's derivation (accept, pick, edit, reject) goes to the
manifest, line by line and counted, since the records themselves must stay in TRL's exact shape.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Protocol, runtime_checkable

from gristmill.app.dedup import Deduplicator, Dropped
from gristmill.app.export_notes import excluded_by_edit
from gristmill.app.prompts import PLACEHOLDER, Style, fill
from gristmill.db import Store
from gristmill.db import exports as exports_db
from gristmill.db import runs as runs_db
from gristmill.db import training as training_db
from gristmill.db.exports import ExportFilter
from gristmill.db.generations import unpack_token_ids
from gristmill.db.runs import RunRecord
from gristmill.models import ModelInfo

FORMATS = ("prompt-completion", "dpo", "kto", "tokens")
FIELDS = {
    "prompt-completion": ["prompt", "completion"],
    "dpo": ["prompt", "chosen", "rejected"],
    "kto": ["prompt", "completion", "label"],
    "tokens": ["id", "input_ids", "completion_mask"],
}


class TokenizerMissing(ValueError):
    """The tokens format needs the generating model's tokenizer and cannot find its file."""


@dataclass(frozen=True)
class FormatOptions:
    """What only the training shapes take: the tokenizer for `tokens`, the reject reasons for `kto`."""

    tokenizer: Path | None = None  # a GGUF used for every run instead of the path each run recorded
    reasons: tuple[str, ...] = ()  # kto: only rejects with these reasons ("none": given without one)


def training_split(style: Style, instruction: str, input_text: str, response: str) -> tuple[str, str]:
    """The style's training text cut before the answer: `prompt + completion == style.training_text(...)`.

    The whitespace between the frame and the answer (the space in "Response: ...") goes to the
    completion: a prompt ending in a space tokenizes differently from the same space followed by a word
    (most tokenizers fold the space into the word's token), and then the prompt's tokens are not a
    prefix of the whole's, which TRL warns about and handles by cutting the prompt. A training format
    without `{response}` gets the answer after its text.
    """
    prompt, separator, tail = _split_parts(style, instruction, input_text, response)
    return prompt, separator + response + tail


def _split_parts(style: Style, instruction: str, input_text: str, response: str) -> tuple[str, str, str]:
    """(prompt, the whitespace before the answer, the format's text after the answer)."""
    block = fill(style.training_input_format, {"input": input_text}) if input_text else ""
    values = {"instruction": instruction, "input": input_text, "input_block": block, "response": response}
    template = style.training_format
    marker = next((m for m in PLACEHOLDER.finditer(template) if m.group(1) == "response"), None)
    if marker is None:
        head, tail = fill(template, values), ""
    else:
        head, tail = fill(template[: marker.start()], values), fill(template[marker.end() :], values)
    prompt = head.rstrip()
    return prompt, head[len(prompt) :], tail


@runtime_checkable
class Vocabulary(Protocol):
    """What the tokens format needs of an engine: ids for text and the exact bytes of each id (to find the sampled
    ids' edges). The in-process engines (llama.cpp, the fake) have both; a remote engine has no token bytes."""

    def info(self) -> ModelInfo: ...

    def tokenize(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def close(self) -> None: ...


def generated_ids(
    engine: Vocabulary, ids: Sequence[int], stored: str, separator: str, answer: str
) -> tuple[list[int], bool] | None:
    """The sampled ids that spell the answer, and whether they spell the separator before it too.

    `stored` is the completion as stored (the model's leading whitespace, the answer, perhaps trailing
    whitespace); the sampled ids may run on past it (the stop string's tokens). Returns the ids of
    `separator + answer` with True when the model's own whitespace ended in the format's separator on a
    token edge; else the ids of `answer` alone with False (the caller tokenizes the separator), when the
    answer starts on a token edge; else None. The answer must end on a token edge: a token straddling
    an edge would carry text the record does not have.
    """
    pieces = [engine.token_bytes(i) for i in ids]
    full, text, body = b"".join(pieces), stored.encode("utf-8"), answer.encode("utf-8")
    if not full.startswith(text):
        return None
    lead = len(text) - len(stored.lstrip().encode("utf-8"))
    end = lead + len(body)
    bounds = list(accumulate((len(p) for p in pieces), initial=0))
    if full[lead:end] != body or end not in bounds:
        return None
    sep = separator.encode("utf-8")
    start = lead - len(sep)
    if start >= 0 and full[start:lead] == sep and start in bounds:
        return list(ids[bounds.index(start) : bounds.index(end)]), True
    if lead in bounds:
        return list(ids[bounds.index(lead) : bounds.index(end)]), False
    return None


@dataclass
class _Tokenizer:
    engine: Vocabulary
    path: str
    fingerprint: str
    eos_id: int | None


@dataclass
class _Derivation:
    """Per-line provenance and counts; the manifest carries both."""

    counts: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    records: list[dict] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    ids: Counter = field(default_factory=Counter)  # tokens: where each completion's ids came from
    prefix_mismatch: int = 0


class Shaper:
    """One export in a training shape: its rows (dpo and kto read their own), one record per row, a manifest part.

    `app.export.export` drives it exactly as it drives the native formats: same filters, same atomic
    write, same manifest, to which `manifest()` adds the derivation.
    """

    def __init__(
        self,
        store: Store,
        fmt: str,
        *,
        style_of: Callable[[int], Style],
        deduplicator: Deduplicator | None = None,
        options: FormatOptions = FormatOptions(),
    ):
        """`style_of(run_id)` is the run's stored style, the one export's native formats use (and its error)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown training format {fmt!r}")
        self.store, self.fmt, self.options, self.deduplicator = store, fmt, options, deduplicator
        self.style_of = style_of
        self.deduplicates = fmt in ("dpo", "kto")  # whole records, here; the others go through export's dedup
        self.derivation = _Derivation()
        self._runs: dict[int, tuple[RunRecord, Style]] = {}
        self._tokenizers: dict[tuple[str, bool | None], _Tokenizer] = {}
        self._run_tokenizer: dict[int, _Tokenizer] = {}
        self._seen: dict[bytes, int] = {}  # digest of a whole record -> the first generation id with it

    # --- rows ------------------------------------------------------------------------------------
    def rows(self, where: ExportFilter) -> Iterator[dict]:
        if self.fmt in ("prompt-completion", "tokens"):
            yield from exports_db.accepted(self.store, where)
            return
        source = (
            training_db.pairs(self.store, where)
            if self.fmt == "dpo"
            else training_db.labeled(self.store, where, self.options.reasons)
        )
        for row in source:
            if excluded_by_edit(row, where.exclude_flags):  # before the repeat check: a left-out record is no original
                continue
            row["_record"] = record = self._dpo(row) if self.fmt == "dpo" else self._kto(row)
            if self.fmt == "dpo" and record["chosen"] == record["rejected"]:
                self.derivation.skipped[f"{row['kind']}: chosen and rejected are the same text"] += 1
                continue
            if self.deduplicator is not None:
                key = hashlib.sha256(json.dumps(record, ensure_ascii=False, sort_keys=True).encode()).digest()
                if key in self._seen:
                    self.deduplicator.dropped.append(Dropped(row["id"], self._seen[key], "record", "exact", 1.0))
                    continue
                self._seen[key] = row["id"]
            yield row

    def record(self, row: dict) -> dict:
        """The record for a row that survived dedup; its derivation is noted here, so the manifest matches the file."""
        if self.fmt == "dpo":
            self._note(row["kind"], row["id"], rejected_id=row["rejected_id"])
            return row["_record"]
        if self.fmt == "kto":
            kind = row["decision"] if row["decision"] == "reject" else self._accept_kind(row, row["is_pick"])
            label = row["_record"]["label"]
            self.derivation.labels[str(label).lower()] += 1
            extra = {"label": label}
            if not label:
                self.derivation.reasons[row["reason"] or "none"] += 1
                extra["reason"] = row["reason"]
            self._note(kind, row["id"], **extra)
            return row["_record"]
        is_pick, blob = training_db.accepted_extras(self.store, row["id"])
        if self.fmt == "prompt-completion":
            self._note(self._accept_kind(row, is_pick), row["id"])
            prompt, completion = self._split(row, row["response"])
            return {"prompt": prompt, "completion": completion}
        record, source = self._tokens(row, unpack_token_ids(blob, row["id"]))
        self._note(self._accept_kind(row, is_pick), row["id"], ids=source)
        return record

    # --- shapes ----------------------------------------------------------------------------------
    def _split(self, row: dict, response: str) -> tuple[str, str]:
        _, style = self._run(row["run_id"])
        return training_split(style, row["instruction"], row["input"], response.strip())

    def _dpo(self, row: dict) -> dict:
        prompt, chosen = self._split(row, row["response"])
        _, rejected = self._split(row, row["rejected_response"] or "")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def _kto(self, row: dict) -> dict:
        prompt, completion = self._split(row, row["response"])
        return {"prompt": prompt, "completion": completion, "label": row["decision"] == "accept"}

    def _tokens(self, row: dict, sampled: list[int] | None) -> tuple[dict, str]:
        """`input_ids` = training prompt (BOS by the run's rule) + the completion's ids + EOS; the mask marks the completion.

        The answer's ids are the sampled ones where the run's own tokenizer is used, the answer is the
        model's (not an edit) and token edges fall on the answer's edges; the format's separator before it
        is the model's own ids too where it generated exactly that, else tokenized alone. Otherwise the
        completion is tokenized as TRL would: the ids of prompt + completion after the prompt's.
        """
        tokenizer = self._tokenizer(row["run_id"])
        engine = tokenizer.engine
        run, style = self._run(row["run_id"])
        # the ids' tokenizer: a remote run's own (recorded since runs kept it), else the in-process model's
        generating = run.settings.get("tokenizer_fingerprint") or row["model_fingerprint"]
        answer = row["response"].strip()
        prompt, separator, tail = _split_parts(style, row["instruction"], row["input"], answer)
        completion = separator + answer + tail
        prompt_ids = engine.tokenize(prompt)
        ids = None
        if row["edited_response"] is not None:
            source = "tokenized: edited"
        elif sampled is None:
            source = "tokenized: stored before ids were kept"
        elif tokenizer.fingerprint != generating:
            source = "tokenized: tokenizer is not the generating model's"
        else:
            found = generated_ids(engine, sampled, row["completion"] or "", separator, answer)
            if found is None:
                source = "tokenized: token edges fall inside the answer's edges"
            else:
                ids, whole = found
                source = "generated" if whole else "generated answer, the format's separator tokenized"
                if not whole and separator:
                    ids = self._bare_ids(tokenizer, separator) + ids
                if tail:
                    ids += self._bare_ids(tokenizer, tail)
        if ids is None:
            joined = engine.tokenize(prompt + completion)
            if joined[: len(prompt_ids)] == prompt_ids:
                ids = joined[len(prompt_ids) :]
            else:
                self.derivation.prefix_mismatch += 1
                ids = self._bare_ids(tokenizer, completion)
        self.derivation.ids[source] += 1
        if tokenizer.eos_id is not None:
            ids = [*ids, tokenizer.eos_id]
        return {
            "id": row["id"],
            "input_ids": [*prompt_ids, *ids],
            "completion_mask": [0] * len(prompt_ids) + [1] * len(ids),
        }, source

    @staticmethod
    def _bare_ids(tokenizer: _Tokenizer, text: str) -> list[int]:
        """Ids of text inside a sequence: no BOS."""
        ids = tokenizer.engine.tokenize(text)
        bos = tokenizer.engine.info().bos_id
        return ids[1:] if ids and tokenizer.engine.info().add_bos and ids[0] == bos else ids

    # --- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _accept_kind(row: dict, is_pick: bool) -> str:
        return "edit" if row["edited_response"] is not None else ("pick" if is_pick else "accept")

    def _note(self, kind: str, generation_id: int, **extra) -> None:
        self.derivation.counts[kind] += 1
        self.derivation.records.append({"kind": kind, "id": generation_id, **extra})

    def _run(self, run_id: int) -> tuple[RunRecord, Style]:
        if run_id not in self._runs:
            self._runs[run_id] = (runs_db.require(self.store, run_id), self.style_of(run_id))
        return self._runs[run_id]

    def _tokenizer(self, run_id: int) -> _Tokenizer:
        if run_id not in self._run_tokenizer:
            run, _ = self._run(run_id)
            add_bos = run.params.get("add_bos")
            path = str(self.options.tokenizer) if self.options.tokenizer else run.settings.get("model_path")
            key = (path or "", add_bos)
            if key not in self._tokenizers:
                self._tokenizers[key] = _open_tokenizer(run, path, add_bos, self.options.tokenizer is not None)
            self._run_tokenizer[run_id] = self._tokenizers[key]
        return self._run_tokenizer[run_id]

    def summary(self) -> dict:
        """Counts for the command's output and the manifest."""
        d = self.derivation
        out: dict = {"derived": dict(sorted(d.counts.items()))}
        if d.skipped:
            out["skipped"] = dict(sorted(d.skipped.items()))
        if self.fmt == "kto":
            out["labels"] = {"true": d.labels["true"], "false": d.labels["false"]}
            out["reject_reasons"] = dict(sorted(d.reasons.items()))
        if self.fmt == "tokens":
            out["completion_ids"] = dict(sorted(d.ids.items()))
            out["prefix_mismatch"] = d.prefix_mismatch
        return out

    def manifest(self) -> dict:
        part: dict = {
            "fields": FIELDS[self.fmt],
            "prompt": "the style's training prompt: formatted_text before the answer (the answer's leading "
            "whitespace belongs to the completion)",
            **self.summary(),
            "derivation": self.derivation.records,
        }
        if self.fmt == "kto" and self.options.reasons:
            part["kto_reject_reasons_kept"] = list(self.options.reasons)
        if self.fmt == "tokens":
            part["tokenizers"] = {
                str(run_id): {"path": t.path, "fingerprint": t.fingerprint, "eos_appended": t.eos_id}
                for run_id, t in sorted(self._run_tokenizer.items())
            }
        return part

    def close(self) -> None:
        for tokenizer in self._tokenizers.values():
            tokenizer.engine.close()


def _open_tokenizer(run: RunRecord, path: str | None, add_bos: bool | None, given: bool) -> _Tokenizer:
    """The generating model's vocabulary (vocab only: instant even for a 20 GB file).

    BOS follows the run's rule where the file is the run's model (a run may have overridden the GGUF's
    rule), else the file's own rule.
    """
    from gristmill.models import create_engine

    if run.engine == "fake" and not given:  # the test engine's tokenizer is itself
        engine = create_engine("fake")
    else:
        if not path or not Path(path).is_file():
            where = f"with {path}, which is not there" if path else "without recording its model path"
            raise TokenizerMissing(
                f"export: the tokens format needs the generating model's tokenizer; run {run.id} was "
                f"generated {where}: give that GGUF with --tokenizer PATH"
            )
        engine = create_engine("llama_cpp", model_path=path, vocab_only=True)
        found = engine.info()
        if found.fingerprint == run.model_fingerprint and add_bos is not None and add_bos != found.add_bos:
            engine.close()
            engine = create_engine("llama_cpp", model_path=path, vocab_only=True, add_bos=add_bos)
    if not isinstance(engine, Vocabulary):  # both engines above have token bytes; a new one must too
        engine.close()
        raise TypeError(f"the {engine.name} engine cannot serve as the tokens format's tokenizer (no token_bytes)")
    info = engine.info()
    return _Tokenizer(engine, info.path, info.fingerprint, info.eos_id)
