"""Shared few-shot draws (`draws = N` in a style): at most N distinct example sets in a run, each item assigned one
by its own seed, each set seeded by the run seed and its number; so prompts share a long prefix that an engine
evaluates once, and an item's prompt never depends on the order, the batch size or the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation, run_style
from gristmill.app.prompts import (
    StyleError,
    _builtin_dir,
    item_seed,
    load_style,
    style_digest,
    style_from_json,
    style_to_json,
)
from gristmill.db import open_store
from gristmill.models import GenerationParams
from gristmill.models.llama_batch import LlamaBatchEngine
from tests.conftest import write

runner = CliRunner()
FEW_SHOT_DIGEST = "3d3bce1023bfbd12b1813163ef090cb879ff22e68ceddaf7f319a6c70fa0e1d0"  # before `draws` existed


def few_shot_with_draws(directory: Path, draws: int | None) -> Path:
    """The built-in few-shot style as a user's file, with `draws` added (None: the key left out)."""
    text = (_builtin_dir() / "few-shot.toml").read_text(encoding="utf-8")
    pool = (_builtin_dir() / "few-shot-pool.jsonl").as_posix()
    text = text.replace('pool_file = "few-shot-pool.jsonl"', f"pool_file = {json.dumps(pool)}")
    assert pool in text
    text = text.replace('name = "few-shot"', 'name = "few-shot-shared"')  # a copy needs its own name
    if draws is not None:
        text += f"draws = {draws}\n"
    return write(directory / f"draws-{draws}.toml", text)


def test_items_share_as_many_draws_as_configured_and_the_draw_is_the_items_own(tmp_path):
    style = load_style(str(few_shot_with_draws(tmp_path, 4))).for_run(7)
    assert style.draws == 4
    seeds = [item_seed(7, f"hash-{n}", k) for n in range(60) for k in range(2)]
    rendered = [style.render(f"Item {n}", seed=seed) for n, seed in enumerate(seeds)]
    by_draw: dict[int, set[tuple[str, ...]]] = {}
    for seed, prompt in zip(seeds, rendered, strict=True):
        assert prompt.meta["draw"] == seed % 4
        by_draw.setdefault(prompt.meta["draw"], set()).add(tuple(prompt.meta["examples"]))
    assert sorted(by_draw) == [0, 1, 2, 3]
    assert all(len(sets) == 1 for sets in by_draw.values())  # one example set per draw
    assert len({next(iter(sets)) for sets in by_draw.values()}) == 4
    # the same draw is the same text up to the instruction: the prefix an engine can evaluate once
    same = [p.text for p in rendered if p.meta["draw"] == 0][:2]
    assert same[0].split("Instruction: Item ")[:-1] == same[1].split("Instruction: Item ")[:-1]
    # in any order, one at a time or not, the same item renders the same prompt
    again = [style.render(f"Item {n}", seed=seed) for n, seed in reversed(list(enumerate(seeds)))]
    assert again[::-1] == rendered
    # the draws come from the run seed: another run has other example sets
    other = load_style(str(few_shot_with_draws(tmp_path, 4))).for_run(8)
    assert {tuple(other.render("x", seed=s).meta["examples"]) for s in range(4)} != set().union(*by_draw.values())


def test_without_draws_every_item_draws_its_own_and_nothing_is_recorded(tmp_path):
    style = load_style("few-shot").for_run(7)
    assert style.draws == 0
    prompts = [style.render("x", seed=item_seed(7, f"h{n}", 0)) for n in range(40)]
    assert all("draw" not in p.meta for p in prompts)
    assert len({tuple(p.meta["examples"]) for p in prompts}) >= 35
    assert style.render("x", seed=3) == load_style("few-shot").for_run(99).render("x", seed=3)  # run seed unused


@pytest.mark.parametrize(
    "value, problem",
    [
        ("0", "expected a whole number >= 1, got 0"),
        ("-2", "expected a whole number >= 1, got -2"),
        ("1.5", "expected a whole number >= 1, got 1.5"),
        ("true", "expected a whole number >= 1, got True"),
        ('"16"', "expected a whole number >= 1, got '16'"),
    ],
)
def test_the_loader_rejects_a_bad_draws_value(tmp_path, value, problem):
    path = write(tmp_path / "bad.toml", few_shot_with_draws(tmp_path, None).read_text() + f"draws = {value}\n")
    with pytest.raises(StyleError) as error:
        load_style(str(path))
    assert str(error.value).startswith(f"{path}: key 'draws': {problem}")


def test_draws_on_a_style_without_examples_is_an_error(tmp_path):
    path = write(tmp_path / "plain.toml", 'template = "Q: {instruction}\\nA:"\ndraws = 4\n')
    with pytest.raises(StyleError, match=r"plain.toml: key 'draws': the template has no \{examples\} to draw"):
        load_style(str(path))
    result = runner.invoke(app, ["generate", "--style", str(path)])
    assert result.exit_code == 2 and "key 'draws'" in result.output


def test_stored_style_round_trips_with_draws_and_the_digest_covers_it(tmp_path):
    shared = load_style(str(few_shot_with_draws(tmp_path, 16)))
    stored = style_from_json(style_to_json(shared))
    assert stored.draws == 16 and '"draws": 16' in style_to_json(shared)
    assert style_digest(stored) == style_digest(shared)
    for seed in range(20):
        assert stored.for_run(5).render("Why?", seed=seed) == shared.for_run(5).render("Why?", seed=seed)
    plain = load_style(str(few_shot_with_draws(tmp_path, None)))
    assert (
        style_digest(plain) != style_digest(shared) != style_digest(load_style(str(few_shot_with_draws(tmp_path, 8))))
    )
    # a style without the key keeps the digest (so the identity) its runs were stored with
    assert "draws" not in style_to_json(plain) and style_digest(load_style("few-shot")) == FEW_SHOT_DIGEST
    assert style_from_json(style_to_json(load_style("few-shot"))).draws == 0


def test_a_run_keeps_its_stored_draws_when_the_file_changes(tmp_path, store, gemma):
    path = few_shot_with_draws(tmp_path, 2)
    write(tmp_path / "a.txt", "One.\nTwo.\n")
    from gristmill.app.ingest import import_file

    assert import_file(store, tmp_path / "a.txt").ok
    run, style, _ = open_run(store, gemma, RunSettings(style=str(path), params=GenerationParams(seed=5)))
    assert style.draws == 2 and style.run_seed == 5
    path.write_text(path.read_text().replace("draws = 2", "draws = 3"), encoding="utf-8")
    again, style_again, _ = open_run(store, gemma, RunSettings(style=str(path)), run_id=run.id)
    assert again.id == run.id and style_again.draws == 2 and style_again == run_style(run)


def _prompts(db: Path) -> dict[tuple[str, int], tuple[str, str, int, list[str]]]:
    with open_store(db) as store:
        rows = store.query(
            "SELECT i.instruction, g.sample_index, g.prompt, g.prompt_token_ids_sha256, g.style_meta, g.status "
            "FROM generations g JOIN instructions i ON i.id = g.instruction_id"
        )
    out = {}
    for instruction, sample, prompt, digest, meta, status in rows:
        assert status == "done"
        meta = json.loads(meta)
        out[(instruction, sample)] = (prompt, digest, meta["draw"], meta["examples"])
    return out


def test_prompts_are_the_same_at_batch_1_and_batch_4_and_in_two_processes(tmp_path, gemma, gemma_path):
    style = few_shot_with_draws(tmp_path, 3)
    items = write(tmp_path / "items.txt", "".join(f"Name a colour, number {i}.\n" for i in range(10)))
    settings = RunSettings(style=str(style), samples=2, params=GenerationParams(max_tokens=2, seed=9))
    with open_store(tmp_path / "one.db") as store:  # one sequence at a time, in id order
        from gristmill.app.ingest import import_file

        assert import_file(store, items).ok
        run, style_obj, settings = open_run(store, gemma, settings)
        run_generation(store, gemma, run, style_obj, settings)
    # two processes at --batch 4 sharing one run, each rendering the items it claims (other hash seeds too)
    env = {**os.environ, "GRISTMILL_DB": str(tmp_path / "two.db")}
    assert runner.invoke(app, ["--db", str(tmp_path / "two.db"), "add", str(items)]).exit_code == 0
    args = [
        sys.executable,
        "-m",
        "gristmill",
        "generate",
        "--style",
        str(style),
        "--samples",
        "2",
        "--seed",
        "9",
        "--max-tokens",
        "2",
        "--batch",
        "4",
        "--threads",
        "1",
        "--quiet",
    ]
    processes = [
        subprocess.Popen(
            args, env={**env, "PYTHONHASHSEED": str(k)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for k in (1, 2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0 and "Traceback" not in err, err
    one, two = _prompts(tmp_path / "one.db"), _prompts(tmp_path / "two.db")
    assert len(one) == 20 and one == two
    assert {draw for _, _, draw, _ in one.values()} == {0, 1, 2}
    assert len({tuple(examples) for _, _, _, examples in one.values()}) == 3


def _evaluated(tmp_path: Path, gemma, style: Path, name: str) -> tuple[int, int]:
    """Prompt tokens the batched engine evaluated (as it reports them per generation) and prompt tokens stored."""
    items = write(tmp_path / "items.txt", "".join(f"Describe item number {i} in one sentence.\n" for i in range(16)))
    engine = LlamaBatchEngine(gemma, 4)
    try:
        with open_store(tmp_path / f"{name}.db") as store:
            from gristmill.app.ingest import import_file

            assert import_file(store, items).ok
            settings = RunSettings(style=str(style), params=GenerationParams(max_tokens=2, seed=11))
            run, style_obj, settings = open_run(store, gemma, settings)
            run_generation(store, gemma, run, style_obj, settings, concurrent=engine)
            rows = store.query("SELECT timings, prompt_tokens FROM generations WHERE status = 'done'")
    finally:
        engine.close()
    assert len(rows) == 16
    reported = sum(json.loads(timings)["prompt_tokens_evaluated"] for timings, _ in rows)
    assert reported == engine.prompt_tokens_evaluated
    return reported, sum(tokens for _, tokens in rows)


def test_shared_draws_evaluate_fewer_prompt_tokens_on_the_real_engine(tmp_path, gemma):
    own, own_stored = _evaluated(tmp_path, gemma, few_shot_with_draws(tmp_path, None), "own")
    shared, shared_stored = _evaluated(tmp_path, gemma, few_shot_with_draws(tmp_path, 2), "shared")
    # a draw per item shares little more than the header; two shared draws leave mostly the instructions to evaluate
    assert own > 0.8 * own_stored
    assert shared < 0.6 * shared_stored and shared < 0.6 * own
