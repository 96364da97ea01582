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

Work is done a page (~1,000 records) at a time in numpy: shingle hashes, signatures, index lookups,
similarity estimates and the true Jaccard of the likeliest candidates; Python only walks the records
that do repeat another, to keep the first of each pair in id order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gristmill.app.ingest import normalize

MODES = ("pair", "instruction", "response", "off")
FIELDS = {
    "pair": ("instruction", "input", "response"),
    "instruction": ("instruction", "input"),
    "response": ("response",),
    "off": (),
}
SHINGLE = 5
PERMS = 32  # min-hashes per field
BANDS, ROWS = 8, 4  # LSH: a pair at Jaccard 0.8 shares a band with probability 0.985 (0.9999 at 0.9)
CAP = 2  # candidates taken per band key and run: the most recent kept records that share it
CHUNK_CHARS = 1 << 19
_ORDINAL_MASK = np.uint64((1 << 28) - 1)
_BLOCK = 1 << 16
ESTIMATE_MARGIN = 0.1  # compute the true Jaccard of a candidate whose estimate (every field) is within this
_RNG = np.random.Generator(np.random.PCG64(20240611))
_MUL = _RNG.integers(1, 2**32, size=PERMS, dtype=np.uint32) | np.uint32(1)
_ADD = _RNG.integers(0, 2**32, size=PERMS, dtype=np.uint32)
_BAND_MUL = _RNG.integers(1, 2**63, size=(BANDS, ROWS), dtype=np.uint64) | np.uint64(1)
_PAD = "\x00"
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


def _norm(text: str) -> str:
    if text.isascii():  # the common case, without normalize()'s Unicode check: same result
        return " ".join(text.split()).lower()
    return normalize(text).lower()


def shingles(text: str) -> set[str]:
    """The 5-character shingles of normalized text; a shorter text is its own single shingle."""
    return _shingles_of(_norm(text))


def _shingles_of(text: str) -> set[str]:
    if len(text) <= SHINGLE:
        return {text}
    return {text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _same_numbers(a: Sequence[str], b: Sequence[str]) -> bool:
    """A near match also needs the same numbers in each field: "for 3 years" and "for 4 years", or
    "question 10130" and "question 101300", are different examples however alike their characters."""
    return all(_NUMBER.findall(x) == _NUMBER.findall(y) for x, y in zip(a, b, strict=False))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread 64-bit hash of each value (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _window_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of every 5-character shingle of each (normalized) text, and the index of its text.

    A text shorter than a shingle is padded, so it is one shingle of itself; hashes come in text order.
    """
    padded = [t if len(t) >= SHINGLE else t.ljust(SHINGLE, _PAD) for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.cumsum(lengths) - lengths
    windows = len(codes) - SHINGLE + 1
    h = codes[:windows].copy()
    for j in range(1, SHINGLE):
        h = h * np.uint64(1_000_003) + codes[j : j + windows]
    owner = np.repeat(np.arange(len(padded)), lengths)[:windows]
    inside = (np.arange(windows) - starts[owner]) <= (lengths - SHINGLE)[owner]  # window within its text
    return _mix(h[inside]), owner[inside]


def signatures(texts: Sequence[str]) -> np.ndarray:
    """MinHash signatures (len(texts) x PERMS, uint32) of normalized texts, computed for all at once.

    Each shingle is hashed once (64 bits); the PERMS hash functions are multiply-add on its high 32 bits.
    """
    chunks, start, size = [], 0, 0
    for end, text in enumerate(texts, 1):  # in chunks of ~512k characters: transient arrays stay ~20 MB
        size += len(text)
        if size >= CHUNK_CHARS or end == len(texts):
            h, owner = _window_hashes(texts[start:end])
            chunks.append(_minhash(h, owner, end - start))
            start, size = end, 0
    return np.concatenate(chunks) if chunks else np.empty((0, PERMS), np.uint32)


def _minhash(h: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    high = (h >> np.uint64(32)).astype(np.uint32)
    first = np.searchsorted(owner, np.arange(count))
    out = np.empty((PERMS, count), np.uint32)
    tmp = np.empty(len(high), np.uint32)
    for k in range(PERMS):  # one permutation at a time: 3x faster than a (PERMS x shingles) broadcast
        np.multiply(high, _MUL[k], out=tmp)
        np.add(tmp, _ADD[k], out=tmp)
        out[k] = np.minimum.reduceat(tmp, first)
    return out.T.copy()


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique hashes, which is several times slower on these arrays)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _shingle_sets(h: np.ndarray, owner: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's distinct shingle hashes (40 bits), sorted, as CSR: (offsets of count + 1, hashes)."""
    keys = _distinct((owner.astype(np.uint64) << np.uint64(40)) | (h >> np.uint64(24)))
    owners = (keys >> np.uint64(40)).astype(np.int64)
    offsets = np.searchsorted(owners, np.arange(count + 1))
    return offsets, keys & np.uint64((1 << 40) - 1)


def _pair_jaccard(offsets: np.ndarray, hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard similarity of the shingle sets of texts a[p] and b[p], for every pair p at once."""
    if not len(a):
        return np.empty(0)

    def gather(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = offsets[texts + 1] - offsets[texts]
        index = np.repeat(offsets[texts] - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        return hashes[index], np.repeat(np.arange(len(texts), dtype=np.uint64), counts)

    ha, pa = gather(a)
    hb, pb = gather(b)
    tagged = np.sort(np.concatenate(((pa << np.uint64(40)) | ha, (pb << np.uint64(40)) | hb)))
    shared = np.bincount((tagged[1:][tagged[1:] == tagged[:-1]] >> np.uint64(40)).astype(np.int64), minlength=len(a))
    sizes = (offsets[a + 1] - offsets[a]) + (offsets[b + 1] - offsets[b])
    return shared / (sizes - shared)


def _estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of pairs of (fields x PERMS) signatures: the lowest field's share of equal min-hashes."""
    if not len(a):
        return np.empty(0)
    return np.count_nonzero(a == b, axis=2).min(axis=1) / PERMS


def _band_keys(sig: np.ndarray) -> np.ndarray:
    """(records x BANDS) keys from the flattened per-field signatures; band b's rows are spread over fields."""
    flat = sig.reshape(len(sig), -1).astype(np.uint64)
    rows = flat[:, np.arange(BANDS * ROWS) * (flat.shape[1] // (BANDS * ROWS))].reshape(len(sig), BANDS, ROWS)
    keys = (rows * _BAND_MUL[None]).sum(axis=2, dtype=np.uint64) + np.arange(1, BANDS + 1, dtype=np.uint64)
    return _mix(keys)


class _Runs:
    """A multimap key -> kept ordinal in a few sorted numpy runs (an LSM tree), 8 bytes an entry.

    Each entry packs the key's high 36 bits over a 28-bit ordinal (up to 268M kept records), so a run is
    one uint64 array: sorted by key, then by ordinal, and merged by one in-place sort with no index
    arrays. A shared 36-bit prefix between different keys only proposes a candidate more, which the
    similarity estimate filters out (and an exact hit is confirmed on the whole signature). A new run
    is merged into the last while that is at most 8x its size, so there are few runs.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def add(self, keys: np.ndarray, ordinals: np.ndarray) -> None:
        if not len(keys):
            return
        run = (keys & ~_ORDINAL_MASK) | ordinals.astype(np.uint64)
        while self.runs and len(self.runs[-1]) <= 8 * len(run):
            run = np.concatenate((self.runs.pop(), run))
        run.sort()
        self.runs.append(run)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, ordinal) pairs: up to CAP of the most recent ordinals for each key, from every run."""
        queries, found = [], []
        needles = np.argsort(keys)  # sorted needles: the binary searches walk memory in order
        low = keys[needles] & ~_ORDINAL_MASK
        high = low | _ORDINAL_MASK
        for run in self.runs:
            hi = np.searchsorted(run, high, side="right")
            lo = np.maximum(np.searchsorted(run, low, side="left"), hi - CAP)
            hit = np.nonzero(hi > lo)[0]
            if not len(hit):
                continue
            counts = hi[hit] - lo[hit]
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            found.append((run[np.repeat(lo[hit], counts) + offsets] & _ORDINAL_MASK).astype(np.int64))
            queries.append(needles[np.repeat(hit, counts)])
        if not queries:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(queries), np.concatenate(found)


class _Blocks:
    """Rows appended in fixed blocks of 65,536 (no doubling copies), gathered by ordinal."""

    def __init__(self, shape: tuple, dtype) -> None:
        self.shape, self.dtype = shape, dtype
        self.blocks: list[np.ndarray] = []
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        done = 0
        while done < len(rows):
            if self.size % _BLOCK == 0:
                self.blocks.append(np.empty((_BLOCK, *self.shape), self.dtype))
            at = self.size % _BLOCK
            take = min(_BLOCK - at, len(rows) - done)
            self.blocks[-1][at : at + take] = rows[done : done + take]
            done += take
            self.size += take

    def __getitem__(self, ordinals: np.ndarray) -> np.ndarray:
        ordinals = np.asarray(ordinals)
        out = np.empty((len(ordinals), *self.shape), self.dtype)
        block, offset = ordinals // _BLOCK, ordinals % _BLOCK
        for b in np.unique(block).tolist():
            where = block == b
            out[where] = self.blocks[b][offset[where]]
        return out


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
        self._held: dict[int, Record] | None = None  # the kept records, where no fetch was given
        if fetch is None:
            held: dict[int, Record] = {}
            self._held, fetch = held, lambda ids: {i: held[i] for i in ids}
        self._fetch: Fetch = fetch
        self._runs = _Runs()
        self._sigs = _Blocks((len(self.fields), PERMS), np.uint8)  # ordinal -> 8 bits of each min-hash
        self._ids = _Blocks((), np.int64)  # ordinal -> record id
        self.dropped: list[Dropped] = []
        self.seen = 0

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
        texts = [_norm(getattr(r, f)) for r in page for f in self.fields]  # record i, field f at i * nf + f
        # equality within this process is all the exact key needs: Python's own hash of the fields
        exact = np.fromiter(
            (hash(tuple(texts[i * nf : (i + 1) * nf])) & 0xFFFFFFFFFFFFFFFF for i in range(n)), dtype=np.uint64, count=n
        )
        sig = signatures(texts).reshape(n, nf, PERMS)
        keys = np.concatenate((exact[:, None], _band_keys(sig)), axis=1)  # (n, 1 + BANDS); column 0: exact
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
        pairs = _distinct(rec * (1 << 40) + ordinal)
        p_rec, p_ord = pairs >> 40, pairs & ((1 << 40) - 1)
        p_est = _estimate(self._sigs[p_ord], small[p_rec])
        local = (
            _distinct(np.concatenate(later) * (1 << 20) + np.concatenate(earlier)) if later else np.empty(0, np.int64)
        )
        l_rec, l_page = local >> 20, local & ((1 << 20) - 1)
        l_est = _estimate(small[l_rec], small[l_page])
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
                else [_norm(getattr(fetched[prior_ids[slot - n]], f)) for f in self.fields]
            )
        ]
        h, owner = _window_hashes(pair_texts) if pair_texts else (np.empty(0, np.uint64), np.empty(0, np.int64))
        offsets, hashes = _shingle_sets(h, owner, len(pair_texts))
        c_rec_row, c_slot_row = row[c_rec], row[c_slot]
        fields = np.arange(nf)
        a = (c_rec_row[:, None] * nf + fields).ravel()
        b = (c_slot_row[:, None] * nf + fields).ravel()
        similarity = _pair_jaccard(offsets, hashes, a, b).reshape(-1, nf).min(axis=1) if len(a) else np.empty(0)

        near: dict[int, list[tuple[float, int, int]]] = {}  # page index -> [(-similarity, kept id, page index)]
        for r, slot, sim in zip(c_rec.tolist(), c_slot.tolist(), similarity.tolist(), strict=False):
            other = (
                texts[slot * nf : (slot + 1) * nf]
                if slot < n
                else [_norm(getattr(fetched[prior_ids[slot - n]], f)) for f in self.fields]
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
        if similarity >= self.threshold and _same_numbers(texts, [_norm(getattr(other, f)) for f in self.fields]):
            return Dropped(record.id, kept_id, self.mode, "near", round(similarity, 4))
        return None
