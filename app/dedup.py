"""Export-time dedup: a record is dropped only when it repeats an earlier kept record, exactly or nearly.

Rules (`--dedup`), each comparing normalized, lower-cased fields of the record against one earlier record:
- `pair` (default): instruction, input AND response all repeat. Identical short answers ("Positive") to
  different questions are kept, and so are instructions that differ only in their input, because each
  field is compared on its own (a shared instruction cannot dilute a different input).
- `instruction`: instruction and input repeat (one answer per question); `response`: the response repeats.
- `off`: nothing is dropped.

"Near" means every compared field has a 5-character-shingle Jaccard similarity >= the threshold. MinHash
LSH proposes candidates, the signatures' estimate filters them, and a drop is decided on the true
Jaccard of the texts, so the threshold means what it says. Memory stays bounded: per kept record a few
dozen bytes of signature and band keys in numpy arrays (no Python set of shingles); the texts needed to
verify a candidate are fetched again (the exporter reads them from the same database snapshot).
Everything is seeded by constants: the same input drops the same records, on any machine.

Work is done a page (~1,000 records) at a time in numpy (the kernels are in `app/minhash.py`): shingle
hashes, signatures, index lookups, similarity estimates and the true Jaccard of the likeliest candidates;
Python only walks the records that do repeat another, to keep the first of each pair in id order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gristmill.app.minhash import (
    BANDS,
    CAP,
    PERMS,
    Blocks,
    Runs,
    band_keys,
    distinct,
    estimate,
    jaccard,
    norm,
    pair_jaccard,
    shingle_sets,
    shingles,
    signatures,
    window_hashes,
)

__all__ = ["FIELDS", "MODES", "Deduplicator", "Dropped", "Fetch", "Record", "jaccard", "shingles", "signatures"]

MODES = ("pair", "instruction", "response", "off")
FIELDS = {
    "pair": ("instruction", "input", "response"),
    "instruction": ("instruction", "input"),
    "response": ("response",),
    "off": (),
}
ESTIMATE_MARGIN = 0.1  # compute the true Jaccard of a candidate whose estimate (every field) is within this
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Record:
    id: int
    instruction: str
    input: str
    response: str


@dataclass(frozen=True)
class Dropped:
    dropped_id: int
    kept_id: int
    rule: str  # pair, instruction or response
    reason: str  # exact or near
    jaccard: float  # the lowest of the compared fields' similarities


Fetch = Callable[[list[int]], dict[int, Record]]


def _same_numbers(a: Sequence[str], b: Sequence[str]) -> bool:
    """A near match also needs the same numbers in each field: "for 3 years" and "for 4 years", or
    "question 10130" and "question 101300", are different examples however alike their characters."""
    return all(_NUMBER.findall(x) == _NUMBER.findall(y) for x, y in zip(a, b, strict=False))


class Deduplicator:
    """Decides, page by page in id order, which records repeat an earlier kept one; `dropped` names each pair.

    `fetch(ids)` returns kept records by id, to compute a candidate's true similarity. Without it the
    kept records are held in memory (fine for tests and small sets; the exporter passes a database fetch).
    """

    def __init__(self, mode: str = "pair", threshold: float = 0.8, fetch: Fetch | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown dedup rule {mode!r}: use one of {', '.join(MODES)}")
        if not 0 < threshold <= 1:
            raise ValueError("dedup threshold must be in (0, 1]")
        self.mode, self.threshold, self.fields = mode, threshold, FIELDS[mode]
        self._held: dict[int, Record] | None = None if fetch else {}
        self._fetch: Fetch = fetch or self._from_memory
        self._runs = Runs()
        self._sigs = Blocks((len(self.fields), PERMS), np.uint8)  # ordinal -> 8 bits of each min-hash
        self._ids = Blocks((), np.int64)  # ordinal -> record id
        self.dropped: list[Dropped] = []
        self.seen = 0

    def _from_memory(self, ids: list[int]) -> dict[int, Record]:
        """Kept records by id, when no `fetch` was given: they are held as they are kept."""
        assert self._held is not None
        return {i: self._held[i] for i in ids}

    def counts(self) -> dict[str, int]:
        """How many records this rule dropped, exact and near."""
        result = {"exact": 0, "near": 0}
        for d in self.dropped:
            result[d.reason] += 1
        return result

    def keep(self, record_id: int, instruction: str, response: str, input: str = "") -> bool:
        """One record at a time (tests, small sets): True if it is new."""
        return self.filter([Record(record_id, instruction, input, response)])[0]

    def filter(self, page: Sequence[Record]) -> list[bool]:
        """Keep flags for a page of records in id order; a dropped record is recorded with its pair."""
        self.seen += len(page)
        if not self.fields or not page:
            return [True] * len(page)
        n, nf = len(page), len(self.fields)
        texts = [norm(getattr(r, f)) for r in page for f in self.fields]  # record i, field f at i * nf + f
        # equality within this process is all the exact key needs: Python's own hash of the fields
        exact = np.fromiter(
            (hash(tuple(texts[i * nf : (i + 1) * nf])) & 0xFFFFFFFFFFFFFFFF for i in range(n)), dtype=np.uint64, count=n
        )
        sig = signatures(texts).reshape(n, nf, PERMS)
        keys = np.concatenate((exact[:, None], band_keys(sig)), axis=1)  # (n, 1 + BANDS); column 0: exact
        small = (sig & np.uint32(0xFF)).astype(np.uint8)  # 8 bits a min-hash suffice to estimate similarity

        # exact repeats: of an earlier page's kept record, or of an earlier record in this page
        query, ordinal = self._runs.lookup(keys.ravel())
        rec, column = query // (1 + BANDS), query % (1 + BANDS)
        exact_of: dict[int, tuple[int, int]] = {}  # page index -> (kept id, page index or -1)
        exact_rec, exact_ord = rec[column == 0], ordinal[column == 0]
        confirmed = (self._sigs[exact_ord] == small[exact_rec]).all(axis=(1, 2))  # not just a shared key prefix
        for r, i in zip(exact_rec[confirmed].tolist(), self._ids[exact_ord[confirmed]].tolist(), strict=False):
            exact_of.setdefault(r, (i, -1))
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")
        sorted_keys, holder = flat[order], order // (1 + BANDS)
        # identical records in this page: each one after the first of its exact key gets the first's verdict
        exact_pos = np.nonzero(order % (1 + BANDS) == 0)[0]
        exact_keys, exact_holder = sorted_keys[exact_pos], holder[exact_pos]
        new_group = np.concatenate(([True], exact_keys[1:] != exact_keys[:-1]))
        group_first = exact_holder[np.nonzero(new_group)[0][np.cumsum(new_group) - 1]]
        same_as = {int(i): int(f) for i, f in zip(exact_holder[~new_group], group_first[~new_group], strict=False)}
        later, earlier = [], []
        for d in range(1, CAP + 1):  # this page: each record with the CAP previous holders of a band key
            same = np.nonzero(sorted_keys[d:] == sorted_keys[:-d])[0]
            if not len(same):
                break
            newer, older = holder[same + d], holder[same]
            later.append(newer[newer != older])
            earlier.append(older[newer != older])

        # near candidates: estimated similarity of every field >= threshold - margin; the best two per record
        pairs = distinct(rec * (1 << 40) + ordinal)
        p_rec, p_ord = pairs >> 40, pairs & ((1 << 40) - 1)
        p_est = estimate(self._sigs[p_ord], small[p_rec])
        local = (
            distinct(np.concatenate(later) * (1 << 20) + np.concatenate(earlier)) if later else np.empty(0, np.int64)
        )
        l_rec, l_page = local >> 20, local & ((1 << 20) - 1)
        l_est = estimate(small[l_rec], small[l_page])
        c_rec = np.concatenate((p_rec, l_rec))
        c_est = np.concatenate((p_est, l_est))
        c_src = np.concatenate((p_ord, -1 - l_page))  # >= 0: an earlier page's ordinal; < 0: -1 - page index
        likely = np.nonzero(c_est >= self.threshold - ESTIMATE_MARGIN)[0]
        likely = likely[np.lexsort((-c_est[likely], c_rec[likely]))]
        rank = np.arange(len(likely)) - np.searchsorted(c_rec[likely], c_rec[likely])
        likely = likely[rank < 2]
        c_rec, c_src = c_rec[likely], c_src[likely]

        # their true Jaccard, per field, all at once; earlier pages' records are fetched again
        src_ids = np.full(len(c_src), -1, np.int64)
        src_ids[c_src >= 0] = self._ids[c_src[c_src >= 0]]
        prior_ids = sorted(set(src_ids[c_src >= 0].tolist()))
        fetched = self._fetch(prior_ids) if prior_ids else {}
        position = {i: n + k for k, i in enumerate(prior_ids)}  # record slot of a fetched id
        c_slot = np.array(
            [position[i] if s >= 0 else -1 - s for s, i in zip(c_src.tolist(), src_ids.tolist(), strict=False)],
            np.int64,
        )
        # shingle sets only of the records in a candidate pair (slots: page index, or n + k for fetched k)
        involved = sorted(set(c_rec.tolist()) | set(c_slot.tolist()))
        row = np.zeros(n + len(prior_ids), np.int64)
        row[involved] = np.arange(len(involved))
        pair_texts = [
            t
            for slot in involved
            for t in (
                texts[slot * nf : (slot + 1) * nf]
                if slot < n
                else [norm(getattr(fetched[prior_ids[slot - n]], f)) for f in self.fields]
            )
        ]
        h, owner = window_hashes(pair_texts) if pair_texts else (np.empty(0, np.uint64), np.empty(0, np.int64))
        offsets, hashes = shingle_sets(h, owner, len(pair_texts))
        c_rec_row, c_slot_row = row[c_rec], row[c_slot]
        fields = np.arange(nf)
        a = (c_rec_row[:, None] * nf + fields).ravel()
        b = (c_slot_row[:, None] * nf + fields).ravel()
        similarity = pair_jaccard(offsets, hashes, a, b).reshape(-1, nf).min(axis=1) if len(a) else np.empty(0)

        near: dict[int, list[tuple[float, int, int]]] = {}  # page index -> [(-similarity, kept id, page index)]
        for r, slot, sim in zip(c_rec.tolist(), c_slot.tolist(), similarity.tolist(), strict=False):
            other = (
                texts[slot * nf : (slot + 1) * nf]
                if slot < n
                else [norm(getattr(fetched[prior_ids[slot - n]], f)) for f in self.fields]
            )
            if sim >= self.threshold and _same_numbers(texts[r * nf : (r + 1) * nf], other):
                near.setdefault(r, []).append(
                    (-sim, page[slot].id if slot < n else prior_ids[slot - n], slot if slot < n else -1)
                )
        flags = [True] * n
        in_page = {r.id: r for r in page}
        verdict: dict[int, Dropped] = {}
        for i in sorted(set(exact_of) | set(near) | set(same_as)):
            match = None
            if i in exact_of:
                match = Dropped(page[i].id, exact_of[i][0], self.mode, "exact", 1.0)
            elif i in same_as:
                first = same_as[i]
                match = (
                    Dropped(page[i].id, page[first].id, self.mode, "exact", 1.0)
                    if flags[first]
                    else replace(verdict[first], dropped_id=page[i].id)
                )
            else:
                for sim, kept_id, j in sorted(near.get(i, ())):
                    if j < 0 or flags[j]:
                        match = Dropped(page[i].id, kept_id, self.mode, "near", round(-sim, 4))
                        break
                else:  # its likeliest matches were dropped themselves: compare with what they repeat
                    for kept_id in dict.fromkeys(verdict[j].kept_id for _, _, j in sorted(near.get(i, ()))):
                        match = self._compare(page[i], texts[i * nf : (i + 1) * nf], kept_id, in_page)
                        if match:
                            break
            if match:
                self.dropped.append(match)
                verdict[i] = match
                flags[i] = False
        kept = np.array(flags)
        if kept.any():
            ordinals = self._ids.size + np.arange(int(kept.sum()))
            self._ids.extend(np.array([r.id for r, k in zip(page, flags, strict=False) if k], dtype=np.int64))
            self._sigs.extend(small[kept])
            self._runs.add(keys[kept].ravel(), np.repeat(ordinals, 1 + BANDS))
            if self._held is not None:
                self._held.update((r.id, r) for r, k in zip(page, flags, strict=False) if k)
        return flags

    def _compare(self, record: Record, texts: list[str], kept_id: int, in_page: dict[int, Record]) -> Dropped | None:
        other = in_page.get(kept_id) or self._fetch([kept_id])[kept_id]
        similarity = min(jaccard(a, getattr(other, f)) for a, f in zip(texts, self.fields, strict=False))
        if similarity >= self.threshold and _same_numbers(texts, [norm(getattr(other, f)) for f in self.fields]):
            return Dropped(record.id, kept_id, self.mode, "near", round(similarity, 4))
        return None
