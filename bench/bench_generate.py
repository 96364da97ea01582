"""Generation throughput: the engine, and `generate` with its database writes, against a bare
llama-cpp-python loop over the same model, prompts, sampling parameters and seeds (goal: ratio >= 0.98).

Rounds alternate bare / engine / pipeline so machine noise hits all three alike; medians are reported.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report, usage  # noqa: E402

from gristmill.app.generate import RunSettings, open_run, run_generation  # noqa: E402
from gristmill.app.ingest import import_file  # noqa: E402
from gristmill.app.prompts import item_seed, load_style  # noqa: E402
from gristmill.db import open_store  # noqa: E402
from gristmill.models import GenerationParams, create_engine  # noqa: E402
from gristmill.models.default_model import default_model_path  # noqa: E402

N_ITEMS, MAX_TOKENS, ROUNDS = 16, 48, 3


def main() -> None:
    model = default_model_path()
    work = Path(tempfile.mkdtemp())
    source = work / "items.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"Describe item number {i} in a sentence.",
                                          "instruction_type": "question"}) + "\n" for i in range(N_ITEMS)))
    engine = create_engine("llama_cpp", model_path=model, n_ctx=1024)
    params = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=11)
    style = load_style("completion")
    with open_store(work / "probe.db") as store:
        import_file(store, source)
        items = [(r["instruction"], r["content_hash"]) for r in store.query("SELECT * FROM instructions ORDER BY id")]
    prompts = [(style.render(text, "", "question").text, item_seed(params.seed, digest, 0)) for text, digest in items]
    llm = engine._llm  # the same loaded model, driven the way a bare script would

    import llama_cpp

    vocab = llm._model.vocab

    def bare() -> float:
        """The tightest loop llama-cpp-python offers: Llama.generate, EOS check, stop check on the decoded text."""
        tokens, start = 0, time.perf_counter()
        for text, seed in prompts:
            llm.set_seed(seed)
            pieces: list[bytes] = []
            count = 0
            for token in llm.generate(engine.tokenize(text), top_k=params.top_k, top_p=params.top_p,
                                      min_p=params.min_p, temp=params.temperature,
                                      repeat_penalty=params.repeat_penalty):
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                count += 1
                pieces.append(llm.detokenize([token]))
                decoded = b"".join(pieces).decode("utf-8", errors="ignore")
                if count >= MAX_TOKENS or any(stop in decoded for stop in style.stop):
                    break
            tokens += count
        return tokens / (time.perf_counter() - start)

    def create_completion_loop() -> float:
        tokens, start = 0, time.perf_counter()
        for text, seed in prompts:
            ids = engine.tokenize(text)
            out = llm.create_completion(ids, max_tokens=MAX_TOKENS, temperature=params.temperature, top_p=params.top_p,
                                        top_k=params.top_k, min_p=params.min_p, repeat_penalty=params.repeat_penalty,
                                        seed=seed, stop=list(style.stop))
            tokens += out["usage"]["completion_tokens"]
        return tokens / (time.perf_counter() - start)

    def through_engine() -> float:
        tokens, start = 0, time.perf_counter()
        for text, seed in prompts:
            tokens += engine.generate(engine.tokenize(text), replace(params, seed=seed, stop=style.stop)).completion_tokens
        return tokens / (time.perf_counter() - start)

    rounds = iter(range(100))

    def pipeline() -> float:
        with open_store(work / f"run{next(rounds)}.db") as store:
            import_file(store, source)
            run, style_obj, settings = open_run(store, engine, RunSettings(params=params))
            final = run_generation(store, engine, run, style_obj, settings)
            return final.completion_tokens / final.elapsed_s

    rates = {"bare": [], "engine": [], "pipeline": [], "create_completion": []}
    for _ in range(ROUNDS):
        rates["bare"].append(bare())
        rates["create_completion"].append(create_completion_loop())
        rates["engine"].append(through_engine())
        rates["pipeline"].append(pipeline())
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{N_ITEMS} prompts x {MAX_TOKENS} max tokens, {ROUNDS} alternating rounds, model {model.name}")
    report("engine tokens/s", median["engine"], median["bare"], "tok/s", ">= 0.98", True)
    report("generate (with SQLite commits) tokens/s", median["pipeline"], median["bare"], "tok/s", ">= 0.98", True)
    print(f"(for reference: a loop of Llama.create_completion on the same ids: {median['create_completion']:.1f} tok/s)")
    engine.close()


if __name__ == "__main__":
    usage(__doc__)
    main()
