"""The generation scheduler: keeps up to `capacity` sequences in flight on any `ConcurrentEngine`.

Continuous batching: each finished item is committed the moment its result arrives (the kill -9 contract is
the same as with one sequence: at most the items in flight are lost, and they stay pending), and the freed slot
takes new work at once. Work is claimed from the database in one place (`generations_db.claimed`: another
process on the same run skips claimed items; a killed process's claims lapse), rendered and
checked before it is submitted (a refusal is committed without reaching the engine), and held in a small
look-ahead window so that prompts sharing a prefix are submitted one after another (the engine can then reuse the
evaluated prefix). The order changes only *when* an item runs, never which prompt it gets: every prompt is
rendered from the item's own seed. Samples of one prompt go to the engine as one job, evaluated once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gristmill.app.flags import quality_flags, trim_leak
from gristmill.app.prompts import Example, Style
from gristmill.db import Store
from gristmill.db import generations as generations_db
from gristmill.db.generations import Outcome, WorkItem
from gristmill.models import ContextRefused, Engine, GenerationParams, GenerationResult, PromptRefused, TextPiece
from gristmill.models.base import EngineError, token_ids_sha256
from gristmill.models.batch import ConcurrentEngine, PromptJob, SampleRequest, common_prefix

if TYPE_CHECKING:
    from gristmill.app.generate import RunSettings
    from gristmill.db.runs import RunRecord

MAX_CONSECUTIVE_FAILURES = 5
LOOKAHEAD_PER_SLOT = 4  # window of rendered items to choose from: enough to find prompts sharing a prefix
MIN_LOOKAHEAD = 16
POLL_TIMEOUT_S = 0.25  # a remote engine waits at most this long per poll, so a stop request is seen quickly
HEARTBEAT_S = 5.0  # progress is posted at least this often while items are in flight, finished or not


@dataclass(frozen=True)
class Progress:
    """Posted after every item, and every HEARTBEAT_S while none finishes; a UI may drop all but the latest."""

    run_id: int
    total: int
    done: int
    refused: int
    failed: int
    completion_tokens: int
    elapsed_s: float
    last_generation_id: int | None = None
    last_status: str | None = None
    processed: int = 0  # items finished by this call: the denominator of the rate and the ETA
    in_flight: int = 0  # items submitted to the engine and not finished
    shown_id: int | None = None  # the item whose text `on_piece` is relaying now (None: no on_piece, or none)
    idle_s: float = 0.0  # seconds since an item last finished (or the run started): a stalled server shows here

    @property
    def finished(self) -> int:
        return self.done + self.refused + self.failed

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        remaining = self.total - self.finished
        return None if self.elapsed_s <= 0 or self.processed == 0 else remaining * self.elapsed_s / self.processed


@dataclass(frozen=True)
class PromptRecord:
    """What is stored of a prompt, whatever becomes of it: the text fed, its token count and fingerprint."""

    prompt: str
    prompt_tokens: int
    prompt_token_ids_sha256: str
    style_meta: dict

    def outcome(self, status: str, **fields) -> Outcome:
        return Outcome(
            status=status,
            prompt=self.prompt,
            prompt_tokens=self.prompt_tokens,
            prompt_token_ids_sha256=self.prompt_token_ids_sha256,
            **{"style_meta": self.style_meta, **fields},
        )


@dataclass(frozen=True)
class Prepared:
    """An item rendered, tokenized and checked: ready to submit. `ids` is exactly what the engine is fed."""

    item: WorkItem
    ids: tuple[int, ...]
    params: GenerationParams  # the item's seed and stops
    record: PromptRecord


def prepare(
    engine: Engine, style: Style, item: WorkItem, params: GenerationParams, extra_examples: Sequence[Example] = ()
) -> Prepared | Outcome:
    """Render and tokenize one item; a refused prompt comes back as its (refused) Outcome, never fed."""
    rendered = style.render(
        item.instruction, item.input, item.instruction_type, seed=item.seed, extra_examples=extra_examples
    )
    ids = engine.tokenize(rendered.text)
    item_params = replace(params, seed=item.seed, stop=tuple(dict.fromkeys((*rendered.stop, *params.stop))))
    record = PromptRecord(rendered.text, len(ids), token_ids_sha256(ids), rendered.meta)
    try:
        engine.check_prompt(ids, item_params.max_tokens)
    except PromptRefused as refusal:
        too_long = len(ids) + item_params.max_tokens > engine.info().n_ctx
        return record.outcome("refused", error=str(refusal), refusal="length" if too_long else "control")
    return Prepared(item, tuple(ids), item_params, record)


def sampled_ids(result: GenerationResult) -> tuple[int, ...] | None:
    """The ids to store; None where the engine does not report them (its count and its ids disagree)."""
    return result.token_ids if len(result.token_ids) == result.completion_tokens else None


def outcome_of(prepared: Prepared, result: GenerationResult, batch: int | None = None) -> Outcome:
    """The stored outcome of one finished sequence: leak trimmed, flags set, how it was batched recorded."""
    text, leaked = trim_leak(result.text, prepared.params.stop)
    meta = dict(prepared.record.style_meta)
    if leaked:
        meta["untrimmed_completion"] = result.text
    flags = quality_flags(text, result.finish_reason, leaked)
    if result.control_token:
        flags.append("control_token")
        meta["control_token"] = result.control_token
    timings = dict(result.timings)
    if batch is not None:
        timings["batch"] = batch  # float rounding differs with the batch size: recorded to reproduce a result
    return prepared.record.outcome(
        "done",
        completion=text,
        completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
        flags=tuple(flags),
        timings=timings,
        completion_token_ids=sampled_ids(result),
        style_meta=meta,
    )


class _PieceRelay:
    """Pieces reach `on_piece` one completion at a time, as with one sequence: the oldest sequence in flight is
    followed live; the others' pieces wait and are relayed in order when their turn comes."""

    def __init__(self, on_piece: Callable[[str], None] | None):
        self.on_piece = on_piece
        self.order: list[int] = []
        self.buffers: dict[int, list[str]] = {}

    def start(self, key: int) -> None:
        if self.on_piece:
            self.order.append(key)
            self.buffers[key] = []

    def piece(self, key: int, text: str) -> None:
        if not self.on_piece or key not in self.buffers:
            return
        if self.order and self.order[0] == key:
            self.on_piece(text)
        else:
            self.buffers[key].append(text)

    @property
    def shown(self) -> int | None:
        """The key whose pieces reach `on_piece` now (None: no `on_piece`, or nothing in flight)."""
        return self.order[0] if self.order else None

    def end(self, key: int) -> None:
        if not self.on_piece or key not in self.buffers:
            return
        self.order.remove(key)
        del self.buffers[key]
        if self.order:  # the next one becomes live: replay what it already produced
            head = self.order[0]
            for text in self.buffers[head]:
                self.on_piece(text)
            self.buffers[head] = []


class Scheduler:
    """One pass over a run's pending work on a `ConcurrentEngine`; `run()` returns the final Progress."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        concurrent: ConcurrentEngine,
        run: RunRecord,
        style: Style,
        settings: RunSettings,
        *,
        limit: int | None = None,
        retry_failed: bool = False,
        retry_refused: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_piece: Callable[[str], None] | None = None,
        prefix_order: bool = True,
        extra_examples: Callable[[WorkItem], Sequence[Example]] | None = None,
    ):
        self.store, self.engine, self.concurrent = store, engine, concurrent
        self.run_record, self.style, self.settings = run, style, settings
        self.limit, self.retry_failed, self.retry_refused = limit, retry_failed, retry_refused
        self.owner = generations_db.new_owner()
        self.on_progress, self.should_stop = on_progress, should_stop
        self.prefix_order = prefix_order
        self.extra_examples = extra_examples or (lambda item: ())
        self.relay = _PieceRelay(on_piece)
        self.window: list[Prepared] = []
        self.in_flight: dict[int, Prepared] = {}
        self.taken = 0
        self.recent: deque[tuple[int, ...]] = deque(maxlen=concurrent.capacity)  # what the engine likely caches
        self.consecutive_failures = 0
        self._source: Iterator[WorkItem] = iter(())
        self._exhausted = False
        self.batch = concurrent.capacity

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> Progress:
        counts = generations_db.status_counts(self.store, self.run_record.id)
        self.started = self.reported = self.last_finished = time.perf_counter()
        self.state = Progress(
            self.run_record.id,
            sum(counts.values()),
            counts["done"],
            counts["refused"],
            0 if self.retry_failed else counts["failed"],
            0,
            0.0,
        )
        if self.retry_refused:
            retried = generations_db.length_refused_count(self.store, self.run_record.id)
            self.state = replace(self.state, refused=self.state.refused - retried)
        # the one place work is taken from the database: claimed before it is generated
        claims = generations_db.claimed(
            self.store,
            self.run_record.id,
            self.owner,
            statuses=("pending", "failed") if self.retry_failed else ("pending",),
            length_refused=self.retry_refused,
            batch=max(1, self.concurrent.capacity),
        )
        self._source = claims
        try:
            while True:
                stopping = self.should_stop()
                if not stopping:
                    self._fill()
                if not self.in_flight:
                    break
                if stopping:
                    break  # the sequences in flight are cancelled below and stay pending
                for event in self.concurrent.poll(POLL_TIMEOUT_S):
                    if isinstance(event.event, TextPiece):
                        self.relay.piece(event.key, event.event.text)
                    else:
                        self._finish(event.key, event.event)
                if time.perf_counter() - self.reported >= HEARTBEAT_S:  # nothing finished for a while: say so
                    self._report()
        finally:
            if self.in_flight:
                self.concurrent.cancel()
                self.in_flight.clear()
            claims.close()
            # items claimed but not finished (the window, cancelled sequences) go back at once, so a resume
            # in this same process (the app's generate room) does not wait for their lease to end
            generations_db.release(self.store, self.owner)
        return self.state

    def _fill(self) -> None:
        """Submit jobs while the engine has free slots and there is work."""
        while self.concurrent.free_slots() > 0:
            self._top_up_window()
            if not self.window:
                return
            job_items = self._next_job(self.concurrent.free_slots())
            first = job_items[0]
            job = PromptJob(
                first.ids, first.params, tuple(SampleRequest(p.item.generation_id, p.item.seed) for p in job_items)
            )
            for p in job_items:
                self.in_flight[p.item.generation_id] = p
                self.relay.start(p.item.generation_id)
            self.recent.append(first.ids)
            self.concurrent.submit(job)

    def _top_up_window(self) -> None:
        size = max(MIN_LOOKAHEAD, LOOKAHEAD_PER_SLOT * self.concurrent.capacity) if self.prefix_order else 1
        while len(self.window) < size and not self._exhausted and self.should_take():
            item = next(self._source, None)
            if item is None:
                self._exhausted = True
                return
            self.taken += 1
            try:
                prepared = prepare(self.engine, self.style, item, self.settings.params, self.extra_examples(item))
                if isinstance(prepared, Prepared):
                    try:  # what batching changes (e.g. the per-sequence context) is checked here, before submit
                        self.concurrent.check_prompt(prepared.ids, prepared.params.max_tokens)
                    except PromptRefused as refusal:  # the per-sequence context: a length refusal
                        prepared = prepared.record.outcome("refused", error=str(refusal), refusal="length")
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # a tokenizer or style failure fails this item; the run goes on
                prepared = Outcome(status="failed", error=f"{type(error).__name__}: {error}")
            if isinstance(prepared, Outcome):
                self._commit(item.generation_id, prepared)
            else:
                self.window.append(prepared)

    def should_take(self) -> bool:
        return self.limit is None or self.taken < self.limit

    def _next_job(self, free: int) -> list[Prepared]:
        """The window item sharing the longest prefix with a recently submitted prompt (whose evaluation the engine
        may still hold; ties: oldest first), with the window's other items that have the very same prompt, as
        many as there are free slots."""
        best = 0
        if self.prefix_order and self.recent:
            best_len = -1
            for index, candidate in enumerate(self.window):
                length = max(common_prefix(candidate.ids, ids) for ids in self.recent)
                if length > best_len:
                    best, best_len = index, length
        chosen = self.window[best]
        group = [
            i
            for i, p in enumerate(self.window)
            if p.ids == chosen.ids
            and p.params.stop == chosen.params.stop
            and replace(p.params, seed=0) == replace(chosen.params, seed=0)
        ]
        group = [best] + [i for i in group if i != best][: free - 1]
        items = [self.window[i] for i in group]
        for i in sorted(group, reverse=True):
            del self.window[i]
        return items

    # --- results ---------------------------------------------------------------------------------
    def _finish(self, key: int, event: GenerationResult | EngineError) -> None:
        prepared = self.in_flight.pop(key, None)
        try:
            if prepared is None:
                return
            if isinstance(event, GenerationResult):
                outcome = outcome_of(prepared, event, self.batch)
            elif isinstance(event, ContextRefused):  # a server's own context check: refused, never truncated
                outcome = prepared.record.outcome("refused", error=str(event), refusal="length")
            else:
                outcome = prepared.record.outcome("failed", error=str(event) or type(event).__name__)  # it was fed
            self._commit(key, outcome)
        finally:
            # after the commit's progress, which a UI takes as "the item shown ended": the next item's text,
            # replayed here, is then the start of what it shows, not wiped with the last one
            self.relay.end(key)

    def _report(self) -> None:
        now = time.perf_counter()
        self.reported = now
        self.state = replace(
            self.state,
            elapsed_s=now - self.started,
            in_flight=len(self.in_flight),
            idle_s=now - self.last_finished,
            shown_id=self.relay.shown,
        )
        if self.on_progress:
            self.on_progress(self.state)

    def _commit(self, generation_id: int, outcome: Outcome) -> None:
        generations_db.finish(self.store, generation_id, outcome)
        state = self.state
        self.state = replace(
            state,
            done=state.done + (outcome.status == "done"),
            refused=state.refused + (outcome.status == "refused"),
            failed=state.failed + (outcome.status == "failed"),
            completion_tokens=state.completion_tokens + (outcome.completion_tokens or 0),
            processed=state.processed + 1,
            last_generation_id=generation_id,
            last_status=outcome.status,
        )
        self.last_finished = time.perf_counter()
        self._report()
        if outcome.status == "failed":
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise RuntimeError(f"{self.consecutive_failures} items failed in a row; the last: {outcome.error}")
        else:
            self.consecutive_failures = 0
