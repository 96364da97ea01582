"""Training shapes: golden files, derivation in the manifest, undone picks, reject reasons, loading with `datasets`,
the prompt/completion token-prefix property on the real tokenizer, and stored sampled ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.export_formats import FORMATS, generated_ids, training_split
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.prompts import BUILTIN_STYLES, Style, load_style
from gristmill.app.review import decide, pick_best, undo
from gristmill.db import open_store
from gristmill.db.generations import pack_token_ids, unpack_token_ids
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

GOLDEN = Path(__file__).parent / "golden" / "export"
runner = CliRunner()
COLUMNS = {"prompt-completion": ["prompt", "completion"], "dpo": ["prompt", "chosen", "rejected"],
           "kto": ["prompt", "completion", "label"], "tokens": ["id", "input_ids", "completion_mask"]}
REPLIES = [" Lyon.", " Paris.", " Marseille, I think.", " Four.", " Five, surely.", " Twenty two",
           " Rain falls softly on the roof.", " Rain is wet", "", " Blue sky and quiet sea.",
           " Grey clouds above a harbour.", " The tide turns twice a day."]


def training_db(tmp_path) -> Path:
    """Four instructions, three samples each (ids 1-3, 4-6, 7-9, 10-12), reviewed through the pipeline:

    1-3: pick sample 2.  4-6: pick sample 1, undone; then 4 accepted with an edit, 5 rejected as wrong.
    7-9 (with input): 7 accepted, 8 rejected as incomplete, 9 rejected without a reason.
    10-12: pick sample 3, then 12 edited (a later edit of a picked answer).
    """
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", "\n".join(json.dumps(i) for i in [
            {"instruction": "Capital of France?", "instruction_type": "fact"},
            {"instruction": "What is 2+2?", "instruction_type": "math"},
            {"instruction": "Write about rain.", "input": "Keep it short.", "instruction_type": "creative"},
            {"instruction": "Describe the sea.", "instruction_type": "creative"},
        ]) + "\n"))
        engine = FakeEngine(replies=REPLIES)
        run, style, settings = open_run(store, engine, RunSettings(samples=3, params=GenerationParams(max_tokens=40)))
        run_generation(store, engine, run, style, settings)
        assert pick_best(store, 1, 2, "ann").chosen == 2
        assert pick_best(store, 4, 1, "ann").chosen == 4
        assert undo(store, "ann") == [4, 5, 6]
        decide(store, 4, "accept", "ann", "Four (2+2=4).")
        decide(store, 5, "reject", "ann", reason="wrong")
        decide(store, 7, "accept", "ann")
        decide(store, 8, "reject", "ann", reason="incomplete")
        decide(store, 9, "reject", "ann")
        assert pick_best(store, 10, 3, "ann").chosen == 12
        decide(store, 12, "accept", "ann", "The tide turns twice a day, pulled by the Moon.")
    return db


def export(tmp_path, fmt: str, *args: str) -> tuple[list[dict], dict]:
    out = tmp_path / f"{fmt}.jsonl"
    result = runner.invoke(app, ["export", str(out), "--format", fmt, *args])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return records, json.loads((tmp_path / f"{fmt}.jsonl.manifest.json").read_text())


def test_training_formats_match_golden_files(tmp_path):
    training_db(tmp_path)
    for fmt in FORMATS:
        export(tmp_path, fmt)
        text = (tmp_path / f"{fmt}.jsonl").read_text(encoding="utf-8")
        golden = GOLDEN / f"{fmt}.jsonl"
        if os.environ.get("GRISTMILL_UPDATE_GOLDEN"):
            golden.write_text(text, encoding="utf-8")
        assert text == golden.read_text(encoding="utf-8"), fmt


def test_prompt_completion_is_the_training_text_split_before_the_answer(tmp_path):
    training_db(tmp_path)
    records, manifest = export(tmp_path, "prompt-completion")
    assert records == [
        {"prompt": "Instruction: Capital of France?\nResponse:", "completion": " Paris."},
        {"prompt": "Instruction: What is 2+2?\nResponse:", "completion": " Four (2+2=4)."},
        {"prompt": "Instruction: Write about rain.\nInput: Keep it short.\nResponse:",
         "completion": " Rain falls softly on the roof."},
        {"prompt": "Instruction: Describe the sea.\nResponse:",
         "completion": " The tide turns twice a day, pulled by the Moon."},
    ]
    assert manifest["derived"] == {"accept": 1, "edit": 2, "pick": 1}
    assert [(d["kind"], d["id"]) for d in manifest["derivation"]] == [("pick", 2), ("edit", 4), ("accept", 7),
                                                                      ("edit", 12)]
    assert manifest["records"] == 4 and manifest["fields"] == ["prompt", "completion"]


def test_dpo_pairs_from_picks_and_edits_with_an_explicit_prompt(tmp_path):
    training_db(tmp_path)
    records, manifest = export(tmp_path, "dpo")
    p1, p2, p4 = ("Instruction: Capital of France?\nResponse:", "Instruction: What is 2+2?\nResponse:",
                  "Instruction: Describe the sea.\nResponse:")
    edited = " The tide turns twice a day, pulled by the Moon."
    assert records == [
        {"prompt": p1, "chosen": " Paris.", "rejected": " Lyon."},
        {"prompt": p1, "chosen": " Paris.", "rejected": " Marseille, I think."},
        {"prompt": p2, "chosen": " Four (2+2=4).", "rejected": " Four."},
        {"prompt": p4, "chosen": edited, "rejected": " Blue sky and quiet sea."},
        {"prompt": p4, "chosen": edited, "rejected": " Grey clouds above a harbour."},
        {"prompt": p4, "chosen": edited, "rejected": " The tide turns twice a day."},
    ]
    assert [(d["kind"], d["id"], d["rejected_id"]) for d in manifest["derivation"]] == [
        ("pick", 2, 1), ("pick", 2, 3), ("edit", 4, 4), ("pick", 12, 10), ("pick", 12, 11), ("edit", 12, 12)]
    assert manifest["derived"] == {"edit": 2, "pick": 4}
    # the undone pick of sample 1 over 5 and 6 left nothing: 5 is rejected now, but by a later action
    assert not any(d["kind"] == "pick" and d["id"] == 4 for d in manifest["derivation"])


def test_a_side_with_no_text_makes_no_dpo_pair(tmp_path):
    """A rejected sibling (or an edited answer's original) whose completion was set to NULL by hand: no pair
    against nothing (it was written as "rejected": " ")."""
    import sqlite3

    db = training_db(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE generations SET completion = NULL WHERE id IN (1, 4)")
    conn.close()
    records, manifest = export(tmp_path, "dpo")
    assert [(d["kind"], d["id"], d["rejected_id"]) for d in manifest["derivation"]] == [
        ("pick", 2, 3), ("pick", 12, 10), ("pick", 12, 11), ("edit", 12, 12)]
    assert all(r["rejected"].strip() for r in records)


def test_an_undone_pick_produces_no_pair(tmp_path):
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", '{"instruction": "Name a colour."}\n'))
        engine = FakeEngine(replies=[" Red.", " Green.", " Blue."])
        run, style, settings = open_run(store, engine, RunSettings(samples=3))
        run_generation(store, engine, run, style, settings)
        pick_best(store, 1, 2, "ann")
    assert len(export(tmp_path, "dpo")[0]) == 2
    with open_store(db) as store:
        undo(store, "ann")
    records, manifest = export(tmp_path, "dpo")
    assert records == [] and manifest["records"] == 0 and manifest["derivation"] == []
    # a pick replaced by another pick: only the standing one counts
    with open_store(db) as store:
        pick_best(store, 1, 2, "ann")
        pick_best(store, 1, 3, "ann")
    records, _ = export(tmp_path, "dpo")
    assert [(r["chosen"], r["rejected"]) for r in records] == [(" Blue.", " Red."), (" Blue.", " Green.")]


def test_kto_labels_every_accept_and_reject_and_counts_reasons(tmp_path):
    training_db(tmp_path)
    records, manifest = export(tmp_path, "kto")
    assert [(d["id"], d["kind"], d["label"]) for d in manifest["derivation"]] == [
        (1, "reject", False), (2, "pick", True), (3, "reject", False), (4, "edit", True), (5, "reject", False),
        (7, "accept", True), (8, "reject", False), (9, "reject", False), (10, "reject", False),
        (11, "reject", False), (12, "edit", True)]
    assert [r["label"] for r in records] == [d["label"] for d in manifest["derivation"]]
    assert records[3] == {"prompt": "Instruction: What is 2+2?\nResponse:", "completion": " Four (2+2=4).",
                          "label": True}
    assert records[4] == {"prompt": "Instruction: What is 2+2?\nResponse:", "completion": " Five, surely.",
                          "label": False}
    assert manifest["labels"] == {"true": 4, "false": 7}
    assert manifest["reject_reasons"] == {"incomplete": 1, "none": 5, "wrong": 1}
    assert manifest["derivation"][4]["reason"] == "wrong"
    # --reason narrows the rejects (accepts stay)
    records, manifest = export(tmp_path, "kto", "--reason", "wrong", "--reason", "incomplete")
    assert [d["id"] for d in manifest["derivation"]] == [2, 4, 5, 7, 8, 12]
    assert manifest["labels"] == {"true": 4, "false": 2}
    said = runner.invoke(app, ["export", str(tmp_path / "k.jsonl"), "--format", "kto"]).output
    assert "k.jsonl: 11 record(s), sha256" in " ".join(said.split())  # not "of N accepted": rejects are records


def test_tokens_carry_the_sampled_ids_and_tokenize_edits(tmp_path):
    db = training_db(tmp_path)
    records, manifest = export(tmp_path, "tokens")
    assert [r["id"] for r in records] == [2, 4, 7, 12]
    assert [d["ids"] for d in manifest["derivation"]] == ["generated", "tokenized: edited", "generated",
                                                          "tokenized: edited"]
    assert manifest["completion_ids"] == {"generated": 2, "tokenized: edited": 2}
    fake = FakeEngine()
    with open_store(db) as store:
        sampled = unpack_token_ids(store.conn.execute(
            "SELECT completion_token_ids FROM generations WHERE id = 2").fetchone()[0])
    first = records[0]
    n_prompt = first["completion_mask"].index(1)
    assert fake.detokenize(first["input_ids"][:n_prompt]) == "Instruction: Capital of France?\nResponse:"
    assert first["input_ids"][n_prompt:] == sampled  # the fake engine has no EOS to append
    assert len(first["input_ids"]) == len(first["completion_mask"])
    assert fake.detokenize(records[1]["input_ids"][records[1]["completion_mask"].index(1):]) == " Four (2+2=4)."


def test_older_generations_without_ids_are_tokenized_and_counted(tmp_path):
    db = training_db(tmp_path)
    with open_store(db) as store:
        store.conn.execute("UPDATE generations SET completion_token_ids = NULL WHERE id = 7")
    records, manifest = export(tmp_path, "tokens")
    assert manifest["completion_ids"] == {"generated": 1, "tokenized: edited": 2,
                                          "tokenized: stored before ids were kept": 1}
    assert FakeEngine().detokenize(records[2]["input_ids"]).endswith("Response: Rain falls softly on the roof.")


def test_tokens_need_the_generating_models_tokenizer(tmp_path, gemma_path):
    db = training_db(tmp_path)
    with open_store(db) as store:
        store.conn.execute("UPDATE runs SET engine = 'llama_cpp', settings = json_set(settings, '$.model_path', ?)",
                           (str(tmp_path / "gone.gguf"),))
    out = tmp_path / "t.jsonl"
    result = runner.invoke(app, ["export", str(out), "--format", "tokens"])
    assert result.exit_code == 2
    assert "gone.gguf" in result.output and "--tokenizer" in result.output and not out.exists()
    records, manifest = export(tmp_path, "tokens", "--tokenizer", str(gemma_path))
    # another model's tokenizer never reuses the fake run's ids: everything is tokenized from text
    assert manifest["completion_ids"] == {"tokenized: edited": 2, "tokenized: tokenizer is not the generating model's": 2}
    assert manifest["tokenizers"]["1"]["path"] == str(gemma_path)
    assert all(r["input_ids"][-1] == manifest["tokenizers"]["1"]["eos_appended"] for r in records)
    text = (tmp_path / "tokens.jsonl").read_text(encoding="utf-8")
    golden = GOLDEN / "tokens-gemma.jsonl"  # the embedded model's vocabulary is pinned by its package version
    if os.environ.get("GRISTMILL_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_options_that_do_not_fit_the_format_are_exit_2(tmp_path):
    training_db(tmp_path)
    out = str(tmp_path / "x.jsonl")
    assert runner.invoke(app, ["export", out, "--format", "dpo", "--reason", "wrong"]).exit_code == 2
    typo = runner.invoke(app, ["export", out, "--format", "kto", "--reason", "wrnog"])  # would keep no reject
    assert typo.exit_code == 2 and "--reason 'wrnog': no reject in force carries it" in " ".join(typo.output.split())
    unused = runner.invoke(app, ["export", out, "--format", "kto", "--reason", "unsafe"])  # configured, never given
    assert unused.exit_code == 2 and "(the reasons rejects carry: incomplete, none, wrong)" in " ".join(
        unused.output.split())
    assert runner.invoke(app, ["export", out, "--format", "kto", "--tokenizer", out]).exit_code == 2
    assert runner.invoke(app, ["export", out, "--format", "tokens", "--tokenizer", str(tmp_path / "no.gguf")]).exit_code == 2


@pytest.mark.parametrize("fmt", ["native", "messages", *FORMATS])
def test_a_run_whose_style_is_lost_fails_every_format_naming_the_run(tmp_path, fmt):
    """A run from before styles were stored, its style file since deleted: every format refuses it the same way,
    never writing records in some other prompt format (the training shapes had fallen back to a default)."""
    import sqlite3

    db = training_db(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET style_definition = NULL, style = ?, settings = json_set(settings, '$.style', ?)",
                     (str(tmp_path / "gone.toml"), str(tmp_path / "gone.toml")))
    conn.close()
    out = tmp_path / "x.jsonl"
    result = runner.invoke(app, ["export", str(out), "--format", fmt])
    assert result.exit_code == 1, result.output
    assert "run 1: its style" in result.output and "gone.toml" in result.output
    assert not out.exists()


def test_every_training_file_loads_with_datasets(tmp_path):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: nothing may download in a test
    datasets = pytest.importorskip("datasets")
    training_db(tmp_path)
    for fmt in FORMATS:
        records, _ = export(tmp_path, fmt)
        loaded = datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"), split="train",
                                       cache_dir=str(tmp_path / "hf-cache"))
        assert loaded.column_names == COLUMNS[fmt], fmt
        assert loaded.num_rows == len(records) and loaded.to_list() == records
    assert str(loaded.features["input_ids"].feature.dtype) == "int64"  # tokens: integer lists, not strings
    kto = datasets.load_dataset("json", data_files=str(tmp_path / "kto.jsonl"), split="train",
                                cache_dir=str(tmp_path / "hf-cache"))
    assert kto.features["label"].dtype == "bool"


def test_filters_apply_to_the_training_shapes(tmp_path):
    training_db(tmp_path)
    assert [d["id"] for d in export(tmp_path, "kto", "--type", "math")[1]["derivation"]] == [4, 5]
    assert [(d["id"], d["rejected_id"]) for d in export(tmp_path, "dpo", "--type", "fact")[1]["derivation"]] == [
        (2, 1), (2, 3)]
    assert export(tmp_path, "prompt-completion", "--min-chars", "100000")[0] == []
    assert [d["id"] for d in export(tmp_path, "tokens", "--max-chars", "10")[1]["derivation"]] == [2]


def test_dpo_and_kto_drop_exact_duplicate_records_and_identical_pairs(tmp_path):
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", '{"instruction": "Say yes."}\n{"instruction": "Agree."}\n'))
        engine = FakeEngine(replies=[" Yes.", " No.", " No.", " Sure.", " Sure.", " Nope."])
        run, style, settings = open_run(store, engine, RunSettings(samples=3))
        run_generation(store, engine, run, style, settings)
        pick_best(store, 1, 1, "ann")
        pick_best(store, 4, 1, "ann")
    records, manifest = export(tmp_path, "dpo")
    assert records == [{"prompt": "Instruction: Say yes.\nResponse:", "chosen": " Yes.", "rejected": " No."},
                       {"prompt": "Instruction: Agree.\nResponse:", "chosen": " Sure.", "rejected": " Nope."}]
    assert manifest["skipped"] == {"pick: chosen and rejected are the same text": 1}
    assert manifest["dedup"]["removed"] == 1 and manifest["dedup"]["pairs"][0]["rule"] == "record"
    records, manifest = export(tmp_path, "kto")
    assert [(r["completion"], r["label"]) for r in records] == [
        (" Yes.", True), (" No.", False), (" Sure.", True), (" Sure.", False), (" Nope.", False)]
    assert [(p["dropped_id"], p["kept_id"]) for p in manifest["dedup"]["pairs"]] == [(3, 2)]
    assert len(export(tmp_path, "dpo", "--no-dedup")[0]) == 3 and len(export(tmp_path, "kto", "--no-dedup")[0]) == 6
    assert manifest["dedup"]["rule"] == "record" and manifest["dedup"]["threshold"] is None
    said = " ".join(runner.invoke(app, ["export", str(tmp_path / "k.jsonl"), "--format", "kto"]).output.split())
    assert "dedup: dropped 1 exact repeat(s) of a whole record" in said and "Jaccard" not in said
    for rule in ("pair", "instruction", "response"):  # a rule typed is refused, not reported as applied
        refused = runner.invoke(app, ["export", str(tmp_path / "k.jsonl"), "--format", "kto", "--dedup", rule])
        assert refused.exit_code == 2 and f"--dedup {rule} does not apply" in " ".join(refused.output.split())


def test_training_split_moves_the_separator_into_the_completion():
    style = Style(name="s")
    assert training_split(style, "Q?", "", "A.") == ("Instruction: Q?\nResponse:", " A.")
    suffixed = Style(name="t", training_format="### Q\n{instruction}\n{input_block}### A\n\n{response}\n### End",
                     training_input_format="({input})\n")
    prompt, completion = training_split(suffixed, "Q?", "ctx", "A.")
    assert (prompt, completion) == ("### Q\nQ?\n(ctx)\n### A", "\n\nA.\n### End")
    assert prompt + completion == suffixed.training_text("Q?", "ctx", "A.")
    braces = Style(name="b", training_format="{{x}} {instruction}: {response}")
    assert training_split(braces, "{response}", "", "R") == ("{x} {response}:", " R")


@pytest.mark.slow
def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion_on_the_real_tokenizer(gemma):
    answers = ["Paris.", "4", "\"Quoted\" answer", "- a list\n- of two", "1. first", "...", ":) yes", "日本語です",
               "```python\nprint(1)\n```", "  indented", "Yes!\n\nSecond paragraph."]
    checked = 0
    for name in BUILTIN_STYLES:
        style = load_style(name)
        for input_text in ("", "Some context: 3 apples."):
            for answer in answers:
                prompt, completion = training_split(style, "Answer the question", input_text, answer.strip())
                assert prompt + completion == style.training_text("Answer the question", input_text, answer.strip())
                ids, whole = gemma.tokenize(prompt), gemma.tokenize(prompt + completion)
                assert whole[:len(ids)] == ids, (name, input_text, answer)
                checked += 1
    assert checked == len(BUILTIN_STYLES) * 2 * len(answers)
    # the property is not free: a prompt that keeps the space before the answer breaks it
    naive = "Instruction: Answer the question\nResponse: "
    assert gemma.tokenize(naive + "Paris.")[:len(gemma.tokenize(naive))] != gemma.tokenize(naive)


def test_generated_ids_need_token_edges_on_the_answers_edges():
    fake = FakeEngine()
    ids = [ord(c) for c in " Paris.\nQ:"]
    assert generated_ids(fake, ids, " Paris.", " ", "Paris.") == ([ord(c) for c in " Paris."], True)
    assert generated_ids(fake, ids, " Paris.", "", "Paris.") == ([ord(c) for c in "Paris."], True)
    # the model's separator was a space, the format's a newline: the answer's ids alone
    assert generated_ids(fake, ids, " Paris.", "\n", "Paris.") == ([ord(c) for c in "Paris."], False)

    class Chunky(FakeEngine):  # tokens of two characters
        def token_bytes(self, token_id: int) -> bytes:
            return {1: b" P", 2: b"ar", 3: b"is", 4: b".\n", 5: b"\nP"}[token_id]
    assert generated_ids(Chunky(), [1, 2, 3, 4], " Paris.", " ", "Paris.") is None  # "." shares a token with "\n"
    assert generated_ids(Chunky(), [1, 2, 3], " Pari", " ", "Pari") is None  # the answer ends inside "is"
    assert generated_ids(Chunky(), [5, 2, 3], "\nParis", " ", "Paris") is None  # ... or starts inside "\nP"
    assert generated_ids(Chunky(), [1, 2, 3], " Paris", "\n", "Paris") is None


def test_token_ids_pack_as_four_bytes_each():
    ids = [0, 1, 151643, 2**32 - 1]
    blob = pack_token_ids(ids)
    assert len(blob) == 16 and blob[:4] == b"\x00\x00\x00\x00" and blob[8:12] == (151643).to_bytes(4, "little")
    assert unpack_token_ids(blob) == ids and unpack_token_ids(None) is None and pack_token_ids([]) == b""


@pytest.mark.slow
def test_generation_stores_the_sampled_ids_on_the_real_model(tmp_path, gemma):
    with open_store(tmp_path / "test.db") as store:
        import_file(store, write(tmp_path / "i.jsonl", '{"instruction": "Name three fruits.", "instruction_type": "list"}\n'
                                                       '{"instruction": "What is the capital of Italy?"}\n'))
        run, style, settings = open_run(store, gemma, RunSettings(params=GenerationParams(max_tokens=24, seed=3)))
        run_generation(store, gemma, run, style, settings)
        rows = store.query("SELECT completion, completion_tokens, completion_token_ids, length(completion_token_ids) AS n"
                           " FROM generations ORDER BY id")
    for row in rows:
        ids = unpack_token_ids(row["completion_token_ids"])
        assert len(ids) == row["completion_tokens"] and row["n"] == 4 * row["completion_tokens"]
        assert gemma.detokenize(ids).startswith(row["completion"])
