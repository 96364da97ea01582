"""Export-time dedup: exact (normalized) and near-duplicate (MinHash LSH) instructions and responses.

LSH only proposes candidates; a pair is dropped on its true shingle Jaccard, so the threshold means
what it says. The first record (lowest id) is kept; the report names the pair and the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from gristmill.app.ingest import normalize

SHINGLE = 5
NUM_PERM = 128
_TEMPLATE = MinHash(num_perm=NUM_PERM)  # permutations generated once, not per record


@dataclass(frozen=True)
class Dropped:
    dropped_id: int
    kept_id: int
    field: str  # instruction or response
    reason: str  # exact or near
    jaccard: float


def shingles(text: str) -> set[str]:
    text = normalize(text).lower()
    if len(text) <= SHINGLE:
        return {text}
    return {text[i:i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


def _minhash(grams: set[str]) -> MinHash:
    m = MinHash(num_perm=NUM_PERM, permutations=_TEMPLATE.permutations, scheme=_TEMPLATE.scheme)
    m.update_batch([gram.encode("utf-8") for gram in grams])  # vectorized: ~50x faster than update()
    return m


class _Index:
    """Kept texts of one field: exact hashes and an LSH index over shingles."""

    def __init__(self, field: str, threshold: float):
        self.field, self.threshold = field, threshold
        self.exact: dict[str, int] = {}
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self.grams: dict[int, set[str]] = {}

    def match(self, record_id: int, text: str) -> Dropped | None:
        digest = hashlib.sha256(normalize(text).lower().encode()).hexdigest()
        if digest in self.exact:
            return Dropped(record_id, self.exact[digest], self.field, "exact", 1.0)
        grams = shingles(text)
        best = None
        for candidate in self.lsh.query(_minhash(grams)):
            other = self.grams[candidate]
            jaccard = len(grams & other) / len(grams | other)
            if jaccard >= self.threshold and (best is None or jaccard > best.jaccard):
                best = Dropped(record_id, candidate, self.field, "near", round(jaccard, 4))
        return best

    def add(self, record_id: int, text: str) -> None:
        self.exact[hashlib.sha256(normalize(text).lower().encode()).hexdigest()] = record_id
        grams = shingles(text)
        self.grams[record_id] = grams
        self.lsh.insert(record_id, _minhash(grams))


class Deduplicator:
    def __init__(self, threshold: float = 0.8):
        if not 0 < threshold <= 1:
            raise ValueError("dedup threshold must be in (0, 1]")
        self.instructions = _Index("instruction", threshold)
        self.responses = _Index("response", threshold)
        self.dropped: list[Dropped] = []

    def keep(self, record_id: int, instruction: str, response: str) -> bool:
        """True if the record is new; else it is recorded as dropped, with the pair and the reason."""
        match = self.instructions.match(record_id, instruction) or self.responses.match(record_id, response)
        if match:
            self.dropped.append(match)
            return False
        self.instructions.add(record_id, instruction)
        self.responses.add(record_id, response)
        return True
