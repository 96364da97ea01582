"""Batched generation: the pipeline's gain at `--batch N` against a minimal low-level batched loop's gain, measured
in the same run on the same loaded model (the goal is relative: a faster single stream leaves less to win).

1. Minimal loop: N distinct prompts evaluated (untimed), then fixed-length decoding of all N together, one
   sampler chain per sequence: the most batching can give on this machine. Aggregate tokens/s at N = 1..16.
2. Pipeline: `run_generation` (render, tokenize, evaluate each prompt, schedule, commit every item to SQLite)
   at --batch N (1 = the plain engine, one sequence at a time, as `generate --batch 1`) on the shipped sample
   instructions (numbered variants), K items per sequence in flight (rounded up to whole rounds of the
   instructions, so every N runs the same mix) so the drain at the end of a run (slots emptying one by one)
   weighs the same at every N, as it would in a long run. Goal: gain(N) >= 90% of the loop's.
   Unlike the loop, the pipeline also evaluates every prompt. So the same work (the pipeline's own prompts and
   answer lengths) is then run again without the pipeline: a minimal continuous-batching loop, no database,
   no text, no stops. Its gain is what evaluating these prompts leaves of the loop's; the pipeline's gain over
   its gain is what the pipeline around the batch costs.
3. The whole default pipeline against a bare single-sequence llama-cpp-python loop (Llama.generate).
4. Prompt tokens evaluated for --samples 4 / (4 x prompt tokens) (goal <= 0.30).
5. Few-shot and URIAL runs' prompt tokens evaluated: prefix-aware order with cache reuse / the same prompts each
   evaluated in full, and / naive (id) order with the same cache. The few-shot style is measured twice: as built
   in (a draw per item) and with shared draws (`draws = D` added to a copy of it; goal aware/naive <= 0.5).

Usage: python bench/bench_batch.py [--quick] [--counts-only] [--no-counts] [--threads T] [--items-per-seq K]
    [--tokens M] [--count-items C] [--draws D] [--samples S] [--round R] [--model PATH] [--gpu-layers L]
    [--batches 1,2,4,8,16]
  --quick          a smoke run, not the README's figures: N = 1, 2, 4, 16 max tokens, 2 items a sequence
  --counts-only    the prompt-token counts (parts 4 and 5) alone, no timings
  --items-per-seq  items per sequence in flight in part 2 (default 24); --tokens: max tokens (default 128)
  --count-items    items in the prompt-token counts (default 128); --draws: shared draws in part 5 (default 16)
  --samples        samples per instruction in part 2 (default 1); --threads: threads (default: all cores)
  --no-counts      parts 1 to 3 alone (the counts are exact and the same on every machine)
  --round          instructions in a round, parts 1 to 3 (default all 60; fewer: shorter runs of a large model)
  --model          another GGUF (default the embedded model), e.g. a shape model (bench/shape_model.py)
  --gpu-layers     layers offloaded to the GPU on a GPU build, -1: all (default 0)
  --batches        the N of parts 1 and 2, comma-separated, 1 first (default 1,2,4,8,16)
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import int_option, text_option, usage  # noqa: E402

from gristmill.app.config import DEFAULT_BATCH  # noqa: E402
from gristmill.app.engines import open_concurrent  # noqa: E402
from gristmill.app.generate import RunSettings, open_run, run_generation  # noqa: E402
from gristmill.app.ingest import import_file  # noqa: E402
from gristmill.db import open_store  # noqa: E402
from gristmill.models import GenerationParams, create_engine  # noqa: E402
from gristmill.models.batch import common_prefix  # noqa: E402
from gristmill.models.llama_batch import min_shared_gain  # noqa: E402
from gristmill.models.default_model import default_model_path  # noqa: E402


usage(__doc__)  # before the options below are read: --help answers whatever else is on the line
QUICK = "--quick" in sys.argv
BATCHES = (1, 2, 4) if QUICK else (1, 2, 4, 8, 16)
MAX_TOKENS = int_option("--tokens", 16 if QUICK else 128)  # the demo's length; the default --max-tokens is 256
ITEMS_PER_SEQ = int_option("--items-per-seq", 2 if QUICK else 24)
N_ITEMS = int_option("--count-items", 128)  # the prompt-token counts (part 4, 5): many items a draw, as in a long run
THREADS = int_option("--threads", None)
DRAWS = int_option("--draws", 16)  # shared few-shot draws for part 5
SAMPLES = int_option("--samples", 1)  # samples per instruction in the throughput table (part 2)
COUNTS_ONLY = "--counts-only" in sys.argv  # only the prompt-token counts (deterministic), no timings
NO_COUNTS = "--no-counts" in sys.argv
ROUND = int_option("--round", None)  # instructions per round in parts 1 to 3 (None: all of them)
GPU_LAYERS = int_option("--gpu-layers", 0)
MODEL = text_option("--model", None)


def _batches(text: str | None) -> tuple[int, ...]:
    """--batches 1,4,8: every gain is over N=1, so 1 comes first; checked here, not after minutes on a GPU."""
    if text is None:
        return BATCHES
    try:
        batches = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise SystemExit(f"--batches {text}: comma-separated whole numbers, 1 first") from None
    if batches[0] != 1 or min(batches) < 1:
        raise SystemExit(f"--batches {text}: 1 first (every gain is over N=1), each at least 1")
    return batches
PARAMS = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=11)


BATCHES = _batches(text_option("--batches", None))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def minimal_loop(engine, n: int, prompts: list[list[int]], steps: int) -> float:
    """Decode-only aggregate tokens/s of n sequences: batch init, one decode per step, a sampler per sequence."""
    import llama_cpp as lib

    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_seq_max = 512 * n, 512, n
    params.n_threads = params.n_threads_batch = engine.n_threads
    params.flash_attn_type = engine._llm.context_params.flash_attn_type
    ctx = lib.llama_init_from_model(engine._llm._model.model, params)
    batch = lib.llama_batch_init(512, 0, 1)
    chains = [_sampler_chain(lib, seq + 1) for seq in range(n)]
    positions, last = [], []
    for seq in range(n):
        ids = prompts[seq % len(prompts)]
        for i, token in enumerate(ids):
            _put(batch, i, token, i, seq, i == len(ids) - 1)
        batch.n_tokens = len(ids)
        assert lib.llama_decode(ctx, batch) == 0
        last.append(lib.llama_sampler_sample(chains[seq], ctx, len(ids) - 1))
        positions.append(len(ids))
    start = time.perf_counter()
    for _ in range(steps):
        for seq in range(n):
            _put(batch, seq, last[seq], positions[seq], seq, True)
            positions[seq] += 1
        batch.n_tokens = n
        assert lib.llama_decode(ctx, batch) == 0
        last = [lib.llama_sampler_sample(chains[seq], ctx, seq) for seq in range(n)]
    elapsed = time.perf_counter() - start
    for chain in chains:
        lib.llama_sampler_free(chain)
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    return n * steps / elapsed


def same_work_loop(engine, n: int, work: list[tuple[list[int], int]]) -> tuple[float, int]:
    """The pipeline's own work without the pipeline: its prompts and answer lengths (`work`, in id order) on n
    sequences with continuous batching, each new prompt evaluated in the step it arrives (after what its
    sequence's cache already holds), exactly as many tokens sampled as the pipeline's answer had. No database,
    no text, no stops: what any batched generator must do for these items. Aggregate tokens/s, tokens evaluated.
    With --samples S a sample copies its prompt a step after it is evaluated and decodes its last token again
    (the pipeline's samples sample from the same logits at once): this loop is then slightly slower."""
    import llama_cpp as lib

    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_seq_max = engine.n_ctx * n, 512, n
    params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = engine.n_threads
    params.flash_attn_type = engine._llm.context_params.flash_attn_type
    params.swa_full = True
    ctx = lib.llama_init_from_model(engine._llm._model.model, params)
    memory = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(512, 0, 1)
    chains = [_sampler_chain(lib, seq + 1) for seq in range(n)]
    cached: list[list[int]] = [[] for _ in range(n)]
    left, pending = [0] * n, [None] * n  # tokens still to sample; a sampled token still to decode
    queue, evaluated, generated = list(reversed(work)), 0, sum(count for _, count in work)
    least_gain = min_shared_gain(engine.n_ctx)
    start = time.perf_counter()
    while queue or any(left):
        size, sample_at, held, placed, waiting = 0, {}, [list(tokens) for tokens in cached], {}, False
        for seq in range(n):
            if not left[seq] and queue and not waiting and size + len(queue[-1][0]) + n <= 512:
                ids, count = queue[-1]
                # a longer prefix is being evaluated in this step: wait for it and copy it, as the pipeline does
                own = common_prefix(held[seq], ids)
                waiting = any(common_prefix(other, ids) - own >= least_gain for other in placed.values())
                if waiting:
                    continue
                queue.pop()
                # never from a sequence given a new prompt in this step: its cache was cut to that prompt's prefix
                sources = [other for other in range(n) if other not in placed]
                placed[seq] = ids
                source = max(sources, key=lambda other: common_prefix(held[other], ids))
                if common_prefix(held[source], ids) - own >= least_gain:  # whole copy, then the tail off
                    lib.llama_memory_seq_rm(memory, seq, -1, -1)
                    lib.llama_memory_seq_cp(memory, source, seq, -1, -1)
                    cached[seq] = held[seq] = held[source]
                keep = min(common_prefix(held[seq], ids), len(ids) - 1)
                lib.llama_memory_seq_rm(memory, seq, keep, -1)
                lib.llama_sampler_reset(chains[seq])
                for position in range(keep, len(ids)):
                    _put(batch, size, ids[position], position, seq, position == len(ids) - 1)
                    size += 1
                evaluated += len(ids) - keep
                cached[seq], left[seq], sample_at[seq] = list(ids), max(count, 1), size - 1
            elif left[seq] and pending[seq] is not None:
                _put(batch, size, pending[seq], len(cached[seq]), seq, True)
                cached[seq].append(pending[seq])
                sample_at[seq], size = size, size + 1
        batch.n_tokens = size
        code = lib.llama_decode(ctx, batch)
        assert code == 0, f"llama_decode returned {code} at a batch of {size} tokens"
        for seq, index in sample_at.items():
            token = lib.llama_sampler_sample(chains[seq], ctx, index)
            left[seq] -= 1
            pending[seq] = token if left[seq] else None
    elapsed = time.perf_counter() - start
    for chain in chains:
        lib.llama_sampler_free(chain)
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    return generated / elapsed, evaluated


def _sampler_chain(lib, seed: int):
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    for sampler in (lib.llama_sampler_init_top_k(PARAMS.top_k), lib.llama_sampler_init_top_p(PARAMS.top_p, 1),
                    lib.llama_sampler_init_min_p(PARAMS.min_p, 1), lib.llama_sampler_init_temp(PARAMS.temperature),
                    lib.llama_sampler_init_dist(seed)):
        lib.llama_sampler_chain_add(chain, sampler)
    return chain


def _put(batch, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
    batch.seq_id[i][0] = seq


def bare_single(engine, prompts: list[list[int]]) -> float:
    """The way most people write it: Llama.generate per prompt, EOS check, max_tokens."""
    import llama_cpp as lib

    llm, tokens, start = engine._llm, 0, time.perf_counter()
    for k, ids in enumerate(prompts):
        llm.set_seed(k)
        count = 0
        for token in llm.generate(ids, top_k=PARAMS.top_k, top_p=PARAMS.top_p, min_p=PARAMS.min_p,
                                  temp=PARAMS.temperature, repeat_penalty=PARAMS.repeat_penalty):
            if lib.llama_vocab_is_eog(engine._vocab, token) or count >= MAX_TOKENS:
                break
            count += 1
        tokens += count
    return tokens / (time.perf_counter() - start)


@dataclass
class PipelineRun:
    tokens_per_s: float  # completion tokens / the run's wall time
    evaluated: int  # prompt tokens evaluated
    stored: int  # prompt tokens stored (every prompt in full)
    generated: int  # completion tokens
    work: list[tuple[list[int], int]]  # each item's prompt ids and completion tokens, in id order


def pipeline(engine, work: Path, source: Path, batch: int, *, samples: int = 1, style: str = "completion",
             prefix_order: bool = True, max_tokens: int = MAX_TOKENS) -> PipelineRun:
    """Aggregate completion tokens/s of run_generation, prompt tokens evaluated, and the work it did."""
    concurrent = open_concurrent(engine, batch)
    db = work / f"run-{time.monotonic_ns()}.db"
    try:
        with open_store(db) as store:
            import_file(store, source)
            settings = RunSettings(style=style, samples=samples, params=GenerationParams(
                max_tokens=max_tokens, temperature=PARAMS.temperature, seed=PARAMS.seed))
            run, style_obj, settings = open_run(store, engine, settings)
            start = time.perf_counter()
            final = run_generation(store, engine, run, style_obj, settings, concurrent=concurrent,
                                   prefix_order=prefix_order)
            elapsed = time.perf_counter() - start
            stored = store.conn.execute("SELECT sum(prompt_tokens) FROM generations").fetchone()[0]
            done = store.conn.execute("SELECT prompt, completion_tokens FROM generations ORDER BY id").fetchall()
        evaluated = getattr(concurrent, "prompt_tokens_evaluated", stored)
        return PipelineRun(final.completion_tokens / elapsed, evaluated, stored, final.completion_tokens,
                           [(engine.tokenize(prompt), count) for prompt, count in done])
    finally:
        concurrent.close()
        db.unlink(missing_ok=True)


def sample_instructions(count: int, base_only: bool = False) -> list[str]:
    """The shipped sample instructions, numbered past the first round so every item is its own."""
    path = Path(__import__("gristmill.app", fromlist=["x"]).__file__).parent / "data" / "sample_instructions.jsonl"
    base = [json.loads(line)["instruction"] for line in path.read_text().splitlines() if line.strip()]
    if ROUND is not None and not 1 <= ROUND <= len(base):
        raise SystemExit(f"--round {ROUND}: 1 to {len(base)} (the shipped instructions)")
    base = base[:ROUND] if ROUND else base
    if base_only:
        return base
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base) + 1})") for i in range(count)]


def whole_rounds(count: int) -> int:
    """`count` rounded up to whole rounds of the shipped instructions, so every N runs the same mix of them (their
    answers' lengths differ by instruction, and with them the share of time spent evaluating prompts)."""
    round_size = len(sample_instructions(0, base_only=True))
    return -(-count // round_size) * round_size


def write_items(path: Path, instructions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"instruction": text, "instruction_type": "question"}) + "\n"
                            for text in instructions))
    return path


def shared_draws_style(work: Path, draws: int) -> Path:
    """The built-in few-shot style as a user's file with `draws` added: the same pool, header and format."""
    builtin = Path(str(files("gristmill.app.styles")))
    text = (builtin / "few-shot.toml").read_text(encoding="utf-8").replace(
        'pool_file = "few-shot-pool.jsonl"', f"pool_file = {json.dumps((builtin / 'few-shot-pool.jsonl').as_posix())}")
    path = work / f"few-shot-draws-{draws}.toml"
    path.write_text(text + f"draws = {draws}\n", encoding="utf-8")
    return path


def main() -> None:
    model = Path(MODEL) if MODEL else default_model_path()
    work = Path(tempfile.mkdtemp())
    source = write_items(work / "items.jsonl", [f"Describe item number {i} in one sentence." for i in range(N_ITEMS)])
    engine = create_engine("llama_cpp", model_path=model, n_ctx=1024, n_threads=THREADS, n_gpu_layers=GPU_LAYERS)
    prompts = [engine.tokenize(text) for text in sample_instructions(16)]
    import llama_cpp

    n_params = llama_cpp.llama_model_n_params(engine._llm._model.model)
    print(f"model {model.name} ({n_params / 1e9:.2f}B parameters), --gpu-layers {GPU_LAYERS}; "
          f"CPU {cpu_model()}, {engine.n_threads} threads; llama-cpp-python "
          f"{llama_cpp.__version__}; {llama_cpp.llama_print_system_info().decode().strip()}")
    print(f"pipeline: {ITEMS_PER_SEQ} sample instructions per sequence in flight, {MAX_TOKENS} max tokens; "
          f"loop: {MAX_TOKENS} decode steps per sequence")
    loop, pipe, same = {}, {}, {}
    for n in () if COUNTS_ONLY else BATCHES:  # alternate the three so machine noise hits them alike
        loop[n] = minimal_loop(engine, n, prompts, MAX_TOKENS)
        items = write_items(work / f"items-{n}.jsonl", sample_instructions(whole_rounds(ITEMS_PER_SEQ * n)))
        run = pipeline(engine, work, items, n, samples=SAMPLES)
        same[n], same_evaluated = same_work_loop(engine, n, run.work)
        pipe[n] = run.tokens_per_s
        print(f"N={n:2d}  minimal loop {loop[n]:6.1f} tok/s (x{loop[n] / loop[1]:.2f})  "
              f"pipeline --batch {n} {pipe[n]:6.1f} (x{pipe[n] / pipe[1]:.2f})  "
              f"pipeline gain / loop gain {(pipe[n] / pipe[1]) / (loop[n] / loop[1]):.2f} (goal >= 0.90)  "
              f"| same work, no pipeline {same[n]:6.1f} (x{same[n] / same[1]:.2f}), pipeline gain / its gain "
              f"{(pipe[n] / pipe[1]) / (same[n] / same[1]):.2f}  [{len(run.work)} items, {run.generated} tokens "
              f"generated, prompt tokens evaluated: pipeline {run.evaluated}, same work {same_evaluated}]")
    if COUNTS_ONLY:
        return _counts(engine, work, source)
    default_items = sample_instructions(ITEMS_PER_SEQ * DEFAULT_BATCH)
    bare = bare_single(engine, [engine.tokenize(text) for text in default_items[: ITEMS_PER_SEQ * 2]])
    default = pipe.get(DEFAULT_BATCH) or pipeline(engine, work, write_items(work / "d.jsonl", default_items),
                                                  DEFAULT_BATCH).tokens_per_s
    if DEFAULT_BATCH not in loop:
        loop[DEFAULT_BATCH] = minimal_loop(engine, DEFAULT_BATCH, prompts, MAX_TOKENS)
    loop_gain = loop[DEFAULT_BATCH] / loop[1]
    print(f"default pipeline (--batch {DEFAULT_BATCH}) {default:.1f} tok/s / bare Llama.generate loop {bare:.1f} "
          f"tok/s = x{default / bare:.2f}; minimal loop gain at that N x{loop_gain:.2f}; "
          f"share {(default / bare) / loop_gain:.2f} (goal >= 0.90)")
    if NO_COUNTS:
        engine.close()
    else:
        _counts(engine, work, source)


def _counts(engine, work: Path, source: Path) -> None:
    """Prompt tokens evaluated: exact counts, not timings, so they hold on a busy machine too."""
    run = pipeline(engine, work, source, DEFAULT_BATCH, samples=4, max_tokens=4)
    print(f"--samples 4: prompt tokens evaluated {run.evaluated} / (4 x prompt tokens) {run.stored} = "
          f"{run.evaluated / run.stored:.3f} (goal <= 0.30)")

    shared = shared_draws_style(work, DRAWS)
    styles = (("few-shot", "few-shot (a draw per item)"), (str(shared), f"few-shot, draws = {DRAWS}"),
              ("urial", "urial"))
    for style, label in styles:
        aware_run = pipeline(engine, work, source, DEFAULT_BATCH, style=style, max_tokens=4)
        aware, stored = aware_run.evaluated, aware_run.stored
        naive = pipeline(engine, work, source, DEFAULT_BATCH, style=style, max_tokens=4, prefix_order=False).evaluated
        print(f"{label} run: prompt tokens evaluated, prefix-aware order {aware}, naive order with the same cache "
              f"{naive}, every prompt in full {stored}: aware/full {aware / stored:.3f}, "
              f"aware/naive {aware / naive:.3f} (goal <= 0.5)")
    engine.close()


if __name__ == "__main__":
    main()
