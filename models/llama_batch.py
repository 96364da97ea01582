"""In-process batching on llama.cpp's low-level API: one `llama_decode` advances every sequence in flight.

Decoding is bound by memory bandwidth: reading the weights once for N sequences instead of one is where the gain
is (prompt evaluation is already compute-bound and barely gains). No released llama-cpp-python has a high-level
batched API, so this drives the C API directly, reusing the model that `LlamaCppEngine` loaded (tokenizing,
prompt checks and piece rendering stay there, so a batched completion is made the same way as a single one).

- Each of the N sequences has its own slot (sequence id), its own sampler chain and seed (the sampled token is
  accepted into that chain, so penalties and RNG are per sequence); after a decode the chains draw in parallel
  on worker threads (`llama_sampling`).
- The samples of one prompt share its evaluation: the prompt is decoded once, then `llama_memory_seq_cp` copies
  it to the other samples' sequences, which sample from the same logits.
- A finished slot keeps its cache: a new prompt that shares a prefix with any slot's cached tokens (a style
  header, a few-shot draw) starts from a copy of it and evaluates only the rest (when that saves enough tokens to
  pay for copying a whole cache stream: `min_shared_gain`). A prompt whose prefix another
  slot is still evaluating waits for it rather than evaluating it a second time; a new prompt overwrites the
  free slot whose cache would be least missed, so distinct prefixes stay cached.

Pitfalls handled here (measured on llama-cpp-python 0.3.x): `n_seq_max` must be N; with `kv_unified` false each
sequence has `n_ctx / n_seq_max` cells and only whole sequences may be copied (`p0 = p1 = -1`; then the tail is
removed with `seq_rm`); batch arrays start uninitialized, so every field of every token is set; logits are
requested only for each sequence's last token; a multi-token decode uses `n_threads_batch`; `swa_full` keeps
every position of sliding-window layers, without which a reused prefix could miss cells.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

from gristmill.models import native_log
from gristmill.models.base import EngineError, GenerationResult, PromptRefused, TextPiece
from gristmill.models.batch import ConcurrentEngine, PromptJob, SequenceEvent, common_prefix
from gristmill.models.llama_cpp_engine import Completion, LlamaCppEngine
from gristmill.models.llama_sampling import ParallelSampler

PENALTY_LAST_N = 64  # as llama-cpp-python's Llama (last_n_tokens_size), so a batched sample is drawn the same way


# Copying another sequence's prefix copies its whole cache stream, all n_ctx_seq cells (measured on the embedded
# model: 5 ms at 1024 cells, 19 ms at 4096, about what evaluating 2 and 9 more prompt tokens costs; a larger model
# computes far more per token than it stores per cell), and waiting for a prefix still being evaluated idles a
# sequence for a step. So a prefix is copied or waited for only when it saves at least this many tokens.
def min_shared_gain(n_ctx_seq: int) -> int:
    return max(4, n_ctx_seq // 512)


@dataclass
class _Slot:
    """One sequence id. `cached` is exactly what its KV cache holds, positions 0..len-1."""

    seq: int
    cached: list[int] = field(default_factory=list)
    key: int | None = None  # None: free (its cache stays, as a prefix cache)
    todo: list[int] = field(default_factory=list)  # prompt tokens still to decode
    leader: _Slot | None = None  # a sample waiting for this slot's prompt, to copy it
    prompt: list[int] = field(default_factory=list)  # the whole prompt of its job
    prefix_source: _Slot | None = None  # an in-flight slot still evaluating a longer shared prefix: copied when done
    shared: int = 0  # how many prompt tokens come from prefix_source
    sampler: object = None
    completion: Completion | None = None
    next_token: int | None = None  # sampled, not yet decoded
    submitted_at: float = 0.0
    first_at: float | None = None
    prompt_evaluated: int = 0


class LlamaBatchEngine(ConcurrentEngine):
    """N sequences of one loaded `LlamaCppEngine` advanced together by `poll`."""

    def __init__(
        self,
        engine: LlamaCppEngine,
        n_seq: int,
        *,
        n_ctx_seq: int | None = None,
        logit_bias: dict[int, float] | None = None,
    ):
        if n_seq < 1:
            raise ValueError("batch must be at least 1")
        lib = engine._lib
        self._lib, self.engine, self.n_seq = lib, engine, n_seq
        self.logit_bias = dict(logit_bias or {})
        params = lib.llama_context_params.from_buffer_copy(engine._llm.context_params)  # same flash-attn etc.
        params.n_seq_max = n_seq
        params.n_ctx = (n_ctx_seq or engine.n_ctx) * n_seq  # not unified: every sequence gets n_ctx / n_seq_max
        params.n_batch = max(engine.n_batch, n_seq)
        params.n_ubatch = min(params.n_batch, max(engine._llm.context_params.n_ubatch, n_seq))
        params.n_threads = params.n_threads_batch = engine.n_threads
        params.kv_unified = False
        params.swa_full = True
        self.n_batch = params.n_batch
        try:
            with native_log.interrupt_after_native_call():  # making a context logs: a Ctrl-C then comes after it
                self._ctx = lib.llama_init_from_model(engine._llm._model.model, params)
        except KeyboardInterrupt:
            if getattr(self, "_ctx", None):
                lib.llama_free(self._ctx)
            raise
        if not self._ctx:
            raise EngineError(
                f"cannot create a context for {n_seq} sequences of {n_ctx_seq or engine.n_ctx} tokens (its cache "
                f"holds all of them: lower --batch or --n-ctx if the memory is not there)"
            )
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(self._ctx)) if hasattr(lib, "llama_n_ctx_seq") else engine.n_ctx
        self.min_shared_gain = min_shared_gain(self.n_ctx_seq)
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._n_vocab = engine.n_vocab
        self.slots = [_Slot(seq) for seq in range(n_seq)]
        self._sampling = ParallelSampler(lib, self._n_vocab, min(engine.n_threads, n_seq))
        self.prompt_tokens_evaluated = 0  # for the benchmark: what prefix sharing saved
        self.decode_calls = 0

    # --- the surface ---------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.n_seq

    def in_flight(self) -> int:
        return sum(slot.key is not None for slot in self.slots)

    def check_prompt(self, ids, max_tokens: int) -> None:
        if len(ids) + max_tokens > self.n_ctx_seq:
            raise PromptRefused(
                f"prompt has {len(ids)} tokens; with max_tokens {max_tokens} that is {len(ids) + max_tokens}, "
                f"more than the {self.n_ctx_seq} tokens each of the {self.n_seq} batched sequences has "
                f"(never truncated: shorten the prompt, lower --max-tokens or raise --n-ctx)"
            )

    def submit(self, job: PromptJob) -> None:
        self._settle_waiting()
        free = [slot for slot in self.slots if slot.key is None]
        if len(job.samples) > len(free):
            raise ValueError(f"{len(job.samples)} samples submitted with {len(free)} free slots")
        if not job.ids:
            raise ValueError("an empty prompt cannot be decoded")
        ids = list(job.ids)
        # the free slot whose cache is least missed leads (what it holds that neither the prompt keeps nor another
        # slot holds: so a distinct prefix survives), then the one sharing most; a longer prefix elsewhere is copied
        ranked = sorted(free, key=lambda slot: (self._loss(slot, ids), -common_prefix(slot.cached, ids)))
        leader = ranked[0]
        reuse = min(common_prefix(leader.cached, ids), len(ids) - 1)  # the last token is decoded for its logits
        source = max(self.slots, key=lambda slot: common_prefix(slot.cached, ids))
        copied = min(common_prefix(source.cached, ids), len(ids) - 1)
        if source is not leader and copied - reuse >= self.min_shared_gain:
            self._lib.llama_memory_seq_rm(self._mem, leader.seq, -1, -1)
            self._lib.llama_memory_seq_cp(self._mem, source.seq, leader.seq, -1, -1)
            leader.cached, reuse = list(source.cached), copied
        if not self._lib.llama_memory_seq_rm(self._mem, leader.seq, reuse, -1):
            self._lib.llama_memory_seq_rm(self._mem, leader.seq, -1, -1)
            reuse = 0
        del leader.cached[reuse:]
        now = time.perf_counter()
        followers = [slot for slot in ranked[1:] if slot is not leader]
        for slot, sample in zip([leader, *followers], job.samples, strict=False):
            slot.key, slot.submitted_at, slot.first_at, slot.next_token = sample.key, now, None, None
            slot.sampler = self._sampler(job, sample.seed)
            slot.completion = Completion(self.engine, job.params)
            slot.leader, slot.todo, slot.prompt_evaluated = None, [], 0
            if slot is not leader:
                slot.leader = leader
        leader.prompt, leader.todo = ids, ids[reuse:]
        waiting_on, shared = self._evaluating_prefix_of(ids, leader, reuse)
        if waiting_on is not None:
            leader.prefix_source, leader.shared, leader.todo = waiting_on, shared, ids[shared:]
        leader.prompt_evaluated = len(leader.todo)

    def _evaluating_prefix_of(self, ids: list[int], leader: _Slot, reuse: int) -> tuple[_Slot | None, int]:
        """The in-flight slot whose prompt, still being evaluated, shares at least `min_shared_gain` tokens more
        than `reuse` with `ids`."""
        best, shared = None, reuse + self.min_shared_gain - 1
        for slot in self.slots:
            if slot is leader or slot.key is None or not slot.todo or slot.prefix_source is not None:
                continue
            common = min(common_prefix(slot.cached + slot.todo, ids), len(ids) - 1)
            if common > shared:
                best, shared = slot, common
        return (best, shared) if best is not None else (None, reuse)

    def _settle_waiting(self) -> None:
        """A slot waiting for a shared prefix copies it once decoded (whole sequence, then the tail removed, as
        a non-unified cache requires); if its source went another way, it evaluates its whole prompt."""
        for slot in self.slots:
            source = slot.prefix_source
            if source is None:
                continue
            if common_prefix(source.cached, slot.prompt) >= slot.shared:
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                self._lib.llama_memory_seq_cp(self._mem, source.seq, slot.seq, -1, -1)
                if self._lib.llama_memory_seq_rm(self._mem, slot.seq, slot.shared, -1):
                    slot.cached, slot.prefix_source = source.cached[: slot.shared], None
                    continue
                source = None  # this cache cannot drop a tail: evaluate the whole prompt
            if (
                source is None
                or source.key is None
                or (common_prefix(source.cached + source.todo, slot.prompt) < slot.shared)
            ):
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                slot.cached, slot.todo, slot.prefix_source = [], list(slot.prompt), None
                slot.prompt_evaluated = len(slot.todo)

    def _loss(self, slot: _Slot, ids: list[int]) -> int:
        """How many of a slot's cached tokens giving it `ids` would lose: not kept by the prompt, held nowhere
        else (a follower's or waiting slot's cache is about to be replaced: it holds nothing for long)."""
        held = max(
            (
                common_prefix(slot.cached, other.cached)
                for other in self.slots
                if other is not slot and other.leader is None and other.prefix_source is None
            ),
            default=0,
        )
        return len(slot.cached) - max(held, common_prefix(slot.cached, ids))

    def poll(self, timeout: float | None = None) -> list[SequenceEvent]:
        entries = self._fill_batch()
        if not entries:
            return []
        code = self._lib.llama_decode(self._ctx, self._batch)
        self.decode_calls += 1
        if code != 0:
            return self._fail_all(f"llama_decode returned {code}" + (" (no free cache cell)" if code == 1 else ""))
        draws: list[tuple[_Slot, int]] = []  # (slot, batch index of the logits it samples from)
        for slot, tokens, logits_index in entries:
            slot.cached.extend(tokens)
            if logits_index is None:  # a prompt chunk that is not the last: nothing to sample yet
                continue
            draws.append((slot, logits_index))
            if slot.next_token is None:  # its prompt just finished: the samples waiting on it copy it now
                for follower in self.slots:
                    if follower.leader is slot and follower.key is not None:
                        self._lib.llama_memory_seq_rm(self._mem, follower.seq, -1, -1)
                        self._lib.llama_memory_seq_cp(self._mem, slot.seq, follower.seq, -1, -1)
                        follower.cached, follower.leader = list(slot.cached), None
                        draws.append((follower, logits_index))
        try:
            tokens = self._sampling.sample(self._ctx, [(slot.sampler, index) for slot, index in draws])
        except EngineError as error:
            return self._fail_all(str(error))
        events: list[SequenceEvent] = []
        for (slot, _), token in zip(draws, tokens, strict=True):
            events.extend(self._advance(slot, token))
        return events

    def cancel(self) -> list[int]:
        keys = [slot.key for slot in self.slots if slot.key is not None]
        for slot in self.slots:
            if slot.key is not None:
                self._release(slot)
        return keys

    def close(self) -> None:
        self._sampling.close()  # no worker holds a chain when cancel frees them
        self.cancel()
        if getattr(self, "_ctx", None):
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def describe(self) -> dict:
        return {"capacity": self.n_seq, "mode": "llama_batch", "n_ctx_seq": self.n_ctx_seq}

    # --- inside a step -------------------------------------------------------------------------
    def _fill_batch(self) -> list[tuple[_Slot, list[int], int | None]]:
        """Every decoding sequence's last sampled token, then prompt chunks up to n_batch tokens in all.

        The tokens go into the batch in sequence-id order: with one cache stream per sequence, llama.cpp splits a
        batch into micro-batches of consecutive sequence ids (equal tokens each), and every micro-batch reads all
        the weights once; out-of-order ids would split one step into several passes.
        Returns (slot, tokens added, batch index of its logits or None) per slot in the batch.
        """
        self._settle_waiting()
        planned: list[tuple[_Slot, list[int], bool]] = []  # (slot, tokens, whether its last token needs logits)
        room = self.n_batch
        for slot in self.slots:
            if slot.key is not None and slot.next_token is not None:
                planned.append((slot, [slot.next_token], True))
                room -= 1
        evaluating = (s for s in self.slots if s.key is not None and s.todo and s.prefix_source is None)
        for slot in sorted(evaluating, key=lambda s: s.submitted_at):
            if room <= 0:
                break
            chunk, slot.todo = slot.todo[:room], slot.todo[room:]
            planned.append((slot, chunk, not slot.todo))
            room -= len(chunk)
            self.prompt_tokens_evaluated += len(chunk)
        batch, count = self._batch, 0
        entries: list[tuple[_Slot, list[int], int | None]] = []
        for slot, tokens, wants_logits in sorted(planned, key=lambda entry: entry[0].seq):
            start = len(slot.cached)
            for offset, token in enumerate(tokens):
                batch.token[count] = token
                batch.pos[count] = start + offset
                batch.n_seq_id[count] = 1
                batch.seq_id[count][0] = slot.seq
                batch.logits[count] = wants_logits and offset == len(tokens) - 1
                count += 1
            entries.append((slot, tokens, count - 1 if wants_logits else None))
        batch.n_tokens = count
        return entries

    def _advance(self, slot: _Slot, token: int) -> list[SequenceEvent]:
        """A sequence's sampled token: its text, and its result if that token ends it."""
        now = time.perf_counter()
        if slot.first_at is None:
            slot.first_at = now
        completion, key = slot.completion, slot.key
        assert completion is not None and key is not None, "only a busy slot is sampled"
        events = []
        emit = completion.feed(token)
        if emit:
            events.append(SequenceEvent(key, TextPiece(emit)))
        if completion.finish is None:
            slot.next_token = token
            return events
        tail = completion.close()
        if tail:
            events.append(SequenceEvent(key, TextPiece(tail)))
        result: GenerationResult = completion.result(
            {
                "prompt_ms": round((slot.first_at - slot.submitted_at) * 1000, 2),
                "generate_ms": round((now - slot.first_at) * 1000, 2),
                "prompt_tokens_evaluated": slot.prompt_evaluated,
            }
        )
        events.append(SequenceEvent(key, result))
        self._release(slot)
        return events

    def _release(self, slot: _Slot) -> None:
        """Free the slot; its cache stays as a prefix cache (what is decoded, not a token sampled after it)."""
        if slot.todo or slot.leader is not None:  # an unfinished prompt: forget the partial cache
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.cached = []
        slot.prefix_source = None
        if slot.sampler:
            self._lib.llama_sampler_free(slot.sampler)
        slot.key, slot.sampler, slot.completion, slot.next_token, slot.todo, slot.leader = (
            None,
            None,
            None,
            None,
            [],
            None,
        )

    def _fail_all(self, message: str) -> list[SequenceEvent]:
        events = []
        for slot in self.slots:
            if slot.key is not None:
                events.append(SequenceEvent(slot.key, EngineError(message)))
                self._release(slot)
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            slot.cached = []
        return events

    def _sampler(self, job: PromptJob, seed: int):
        """The chain llama-cpp-python's `Llama` builds for these parameters, with this sample's own seed."""
        lib, p = self._lib, job.params
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if self.logit_bias:
            biases = (lib.llama_logit_bias * len(self.logit_bias))(
                *(lib.llama_logit_bias(token, bias) for token, bias in self.logit_bias.items())
            )
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_logit_bias(
                    self._n_vocab, len(self.logit_bias), ctypes.cast(biases, lib.llama_logit_bias_p)
                ),
            )
        lib.llama_sampler_chain_add(
            chain, lib.llama_sampler_init_penalties(self._n_vocab, PENALTY_LAST_N, p.repeat_penalty, 0.0, 0.0)
        )
        if p.temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(p.top_k))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_typical(1.0, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(p.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain
