"""Export dedup never drops a distinct training example by default; stricter rules are opt-in and counted.

Real SQLite files and the real `gristmill export` command; generations come from the fake engine (the
dedup path does not depend on which model wrote the text; the export tests cover the real model).
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.dedup import Deduplicator, jaccard
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.db import open_store
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

runner = CliRunner()


def accepted_db(tmp_path: Path, items: list[tuple[dict, str]], samples: int = 1) -> Path:
    """One generation per (instruction, reply), every one accepted, written as a user would with sqlite3."""
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", "\n".join(json.dumps(i) for i, _ in items) + "\n"))
        engine = FakeEngine(replies=[reply for _, reply in items for _ in range(samples)], n_ctx=100_000)
        settings = RunSettings(samples=samples, params=GenerationParams(max_tokens=500))
        run, style, settings = open_run(store, engine, settings)
        run_generation(store, engine, run, style, settings)
        store.conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) "
                           "SELECT id, 'accept', 'ann', 't' FROM generations ORDER BY id")
    return db


def export(tmp_path: Path, *args: str) -> tuple[list[dict], dict, str]:
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["export", str(out), *args])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    return [json.loads(line) for line in out.read_text().splitlines()], manifest, result.output


REVIEWS = ["a superb, moving film", "dull and far too long", "the best cast this year", "a waste of an evening",
           "I laughed all the way through", "the plot made no sense at all", "beautifully shot", "wooden acting"]


def test_a_classification_set_keeps_every_record(tmp_path):
    """1,000 two-label records: identical short answers to different inputs are distinct examples."""
    items = [({"instruction": "Classify the sentiment of this movie review as Positive or Negative.",
               "input": f"Review {n}: {REVIEWS[n % 8]}, said viewer {n * 7919 % 1000}."},
              " Positive" if n % 2 else " Negative") for n in range(1000)]
    accepted_db(tmp_path, items)
    records, manifest, output = export(tmp_path)
    assert len(records) == 1000 and manifest["records"] == 1000 and manifest["dedup"]["removed"] == 0
    assert "dedup rule pair: dropped 0 record(s)" in output
    # the stricter, opt-in rule drops every repeated label, and says so
    records, manifest, output = export(tmp_path, "--dedup", "response")
    assert len(records) == 2 and manifest["dedup"]["removed"] == 998
    assert "dedup rule response: dropped 998 record(s) (998 exact, 0 near" in output


def test_an_input_written_into_the_instruction_is_not_diluted(tmp_path):
    """'Classify: Great film!' vs 'Classify: Awful film!' with the same label are two examples."""
    items = [({"instruction": f"Classify the sentiment: {review}!"}, " Positive") for review in REVIEWS]
    accepted_db(tmp_path, items)
    records, manifest, _ = export(tmp_path)
    assert len(records) == len(REVIEWS), manifest["dedup"]["pairs"]


def test_planted_duplicates_are_dropped_and_near_misses_kept(tmp_path):
    photosynthesis = "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen."
    items = [
        ({"instruction": "Explain photosynthesis."}, " " + photosynthesis),  # 1 kept
        ({"instruction": "Explain  PHOTOSYNTHESIS. "}, photosynthesis.upper()),  # 2 exact repeat of 1 (normalized)
        ({"instruction": "Explain photosynthesis!"}, photosynthesis.replace("sugar", "sugars")),  # 3 near repeat of 1
        ({"instruction": "Explain photosynthesis", "input": "for a child"}, " " + photosynthesis),  # 4 other input
        ({"instruction": "Explain photosynthesis?"}, " Plants eat light."),  # 5 same question, another answer
        ({"instruction": "Explain respiration."}, " " + photosynthesis),  # 6 other question, same answer
        ({"instruction": "Explain photosynthesis in detail."}, " " + photosynthesis),  # 7 near-miss question
    ]
    assert jaccard("Explain photosynthesis.", "Explain photosynthesis in detail.") < 0.8
    accepted_db(tmp_path, items)
    records, manifest, output = export(tmp_path)
    assert [r["id"] for r in records] == [1, 4, 5, 6, 7]
    pairs = {(p["dropped_id"], p["kept_id"], p["rule"], p["reason"]) for p in manifest["dedup"]["pairs"]}
    assert pairs == {(2, 1, "pair", "exact"), (3, 1, "pair", "near")}
    assert all(p["jaccard"] >= 0.8 for p in manifest["dedup"]["pairs"])
    assert manifest["dedup"]["removed_by"] == {"exact": 1, "near": 1}
    assert "dropped 2 record(s) (1 exact, 1 near" in output
    # one answer per question, opt-in: 5 and 7's near-miss stay apart from 1 only where the question differs
    records, manifest, _ = export(tmp_path, "--dedup", "instruction")
    assert [r["id"] for r in records] == [1, 4, 6, 7]
    records, manifest, output = export(tmp_path, "--dedup", "off")
    assert len(records) == 7 and manifest["dedup"]["removed"] == 0 and "dedup: off" in output


def test_several_accepted_samples_of_one_instruction_are_kept(tmp_path):
    items = [({"instruction": "Name a fruit."}, " An apple."), ({"instruction": "Name a fruit."}, " A pear.")]
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", json.dumps(items[0][0]) + "\n"))
        engine = FakeEngine(replies=[" An apple.", " A ripe pear from the tree."])
        run, style, settings = open_run(store, engine, RunSettings(samples=2, params=GenerationParams(max_tokens=40)))
        run_generation(store, engine, run, style, settings)
        store.conn.execute("INSERT INTO reviews (generation_id, decision, reviewer, created_at) "
                           "SELECT id, 'accept', 'ann', 't' FROM generations")
    records, _, _ = export(tmp_path)
    assert [r["response"] for r in records] == [" An apple.", " A ripe pear from the tree."]


def test_repeats_across_pages_are_found_through_the_database(tmp_path):
    """Records far apart (other pages of 1,000) are compared too; the kept texts are fetched, not held."""
    items = [({"instruction": f"Write fact number {n} about the number {n * 37 % 1009}."},
              f" The number {n * 37 % 1009} is {'even' if n % 2 == 0 else 'odd'}, and fact {n} says so.")
             for n in range(2500)]
    items[2100] = ({"instruction": "Write fact number 5 about the number 185"}, " The number 185 is odd, and fact 5 says so!")
    items[2400] = ({"instruction": "write FACT number 7 about the number 259."}, " the number 259 is odd, and fact 7 says so.")
    accepted_db(tmp_path, items)
    records, manifest, _ = export(tmp_path)
    pairs = {(p["dropped_id"], p["kept_id"], p["reason"]) for p in manifest["dedup"]["pairs"]}
    assert pairs == {(2101, 6, "near"), (2401, 8, "exact")} and len(records) == 2498


def test_the_deduplicator_holds_no_text_when_it_can_fetch(tmp_path):
    fetched: list[list[int]] = []
    texts = {1: ("Explain tides.", "Tides rise and fall because the Moon's gravity pulls on the oceans.")}

    def fetch(ids):
        from gristmill.app.dedup import Record
        fetched.append(ids)
        return {i: Record(i, texts[i][0], "", texts[i][1]) for i in ids}

    dedup = Deduplicator("pair", 0.8, fetch=fetch)
    assert dedup.keep(1, *texts[1])
    assert not dedup.keep(2, "Explain tides!", "Tides rise and fall because the Moon's gravity pulls on the ocean.")
    assert fetched == [[1]] and dedup.dropped[0].reason == "near" and dedup._held is None


def test_questions_that_differ_in_a_number_are_different_examples(tmp_path):
    def item(years: int, amount: str, typo: bool = False) -> tuple[dict, str]:
        question = f"Compute the compound interest on $1000 at 5% for {years} years, compounded yearly."
        answer = (f" Use A = P(1 + r)^n, then subtract the principal from the final amount A to get the interest."
                  f" The interest is ${amount} after {years} years at 5% compounded yearly.")
        return ({"instruction": question.replace("Compute", "Calculate") if typo else question},
                answer.replace("yearly.", "yearly!") if typo else answer)

    items = [item(3, "157.63"), item(4, "215.51"), item(3, "157.63", typo=True)]
    assert min(jaccard(items[0][0]["instruction"], items[1][0]["instruction"]), jaccard(items[0][1], items[1][1])) > 0.8
    accepted_db(tmp_path, items)
    records, manifest, _ = export(tmp_path)
    assert [r["id"] for r in records] == [1, 2]
    assert [(p["dropped_id"], p["kept_id"], p["reason"]) for p in manifest["dedup"]["pairs"]] == [(3, 1, "near")]
