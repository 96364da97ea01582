"""The numpy MinHash kernels behind export dedup (`app/dedup.py`): shingling, signatures, LSH band keys, the
true Jaccard of many pairs at once, and the two append-only stores the deduplicator keeps per kept record.

Texts are normalized (whitespace collapsed, lower-cased) and cut into 5-character shingles; each shingle is
hashed once to 64 bits and PERMS multiply-add permutations of its high half give the signature. Everything
is seeded by constants: the same texts give the same signatures and keys on any machine. Work is done on a
whole page of texts at a time (no Python loop over shingles), and transient arrays stay ~20 MB whatever the
page's size. Memory per kept record is a few dozen bytes (`Runs`, `Blocks`): no Python set of shingles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gristmill.app.ingest import normalize

SHINGLE = 5
PERMS = 32  # min-hashes per field
BANDS, ROWS = 8, 4  # LSH: a pair at Jaccard 0.8 shares a band with probability 0.985 (0.9999 at 0.9)
CAP = 2  # candidates taken per band key and run: the most recent kept records that share it
CHUNK_CHARS = 1 << 19
_ORDINAL_MASK = np.uint64((1 << 28) - 1)
_BLOCK = 1 << 16
_RNG = np.random.Generator(np.random.PCG64(20240611))
_MUL = _RNG.integers(1, 2**32, size=PERMS, dtype=np.uint32) | np.uint32(1)
_ADD = _RNG.integers(0, 2**32, size=PERMS, dtype=np.uint32)
_BAND_MUL = _RNG.integers(1, 2**63, size=(BANDS, ROWS), dtype=np.uint64) | np.uint64(1)
_PAD = "\x00"


def norm(text: str) -> str:
    if text.isascii():  # the common case, without normalize()'s Unicode check: same result
        return " ".join(text.split()).lower()
    return normalize(text).lower()


def shingles(text: str) -> set[str]:
    """The 5-character shingles of normalized text; a shorter text is its own single shingle."""
    return _shingles_of(norm(text))


def _shingles_of(text: str) -> set[str]:
    if len(text) <= SHINGLE:
        return {text}
    return {text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread 64-bit hash of each value (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
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
            h, owner = window_hashes(texts[start:end])
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


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique hashes, which is several times slower on these arrays)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def shingle_sets(h: np.ndarray, owner: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's distinct shingle hashes (40 bits), sorted, as CSR: (offsets of count + 1, hashes)."""
    keys = distinct((owner.astype(np.uint64) << np.uint64(40)) | (h >> np.uint64(24)))
    owners = (keys >> np.uint64(40)).astype(np.int64)
    offsets = np.searchsorted(owners, np.arange(count + 1))
    return offsets, keys & np.uint64((1 << 40) - 1)


def pair_jaccard(offsets: np.ndarray, hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


def estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of pairs of (fields x PERMS) signatures: the lowest field's share of equal min-hashes."""
    if not len(a):
        return np.empty(0)
    return np.count_nonzero(a == b, axis=2).min(axis=1) / PERMS


def band_keys(sig: np.ndarray) -> np.ndarray:
    """(records x BANDS) keys from the flattened per-field signatures; band b's rows are spread over fields."""
    flat = sig.reshape(len(sig), -1).astype(np.uint64)
    rows = flat[:, np.arange(BANDS * ROWS) * (flat.shape[1] // (BANDS * ROWS))].reshape(len(sig), BANDS, ROWS)
    keys = (rows * _BAND_MUL[None]).sum(axis=2, dtype=np.uint64) + np.arange(1, BANDS + 1, dtype=np.uint64)
    return _mix(keys)


class Runs:
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


class Blocks:
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
