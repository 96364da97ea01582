"""One real review session, start to finish: generate on the embedded model, review through Pilot (a pick, an
undone pick, an edit, a reject with a reason), then export every training shape and check it record by record."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from gristmill.app.cli import app
from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.tui.app import make_app
from gristmill.db import open_store
from gristmill.db.generations import unpack_token_ids
from gristmill.models import GenerationParams
from tests.conftest import write

runner = CliRunner()
INSTRUCTIONS = ["Write one sentence about the sea.", "Give a reason to learn to cook."]


def contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i:i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def export(tmp_path, fmt: str) -> tuple[list[dict], dict]:
    out = tmp_path / f"{fmt}.jsonl"
    result = runner.invoke(app, ["export", str(out), "--format", fmt, "--no-dedup"])
    assert result.exit_code == 0, result.output
    return ([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()],
            json.loads((tmp_path / f"{fmt}.jsonl.manifest.json").read_text()))


@pytest.mark.slow
async def test_a_review_session_exports_to_every_training_shape(tmp_path, gemma):
    db = tmp_path / "test.db"
    with open_store(db) as store:
        import_file(store, write(tmp_path / "i.jsonl", "".join(json.dumps({"instruction": i}) + "\n" for i in INSTRUCTIONS)))
        run, style, settings = open_run(store, gemma, RunSettings(samples=3, params=GenerationParams(max_tokens=16, seed=5)))
        run_generation(store, gemma, run, style, settings)
        done = {r["id"]: r["completion"] for r in store.query("SELECT id, completion FROM generations WHERE status = 'done'")}
    assert sorted(done) == list(range(1, 7))

    async with make_app(db, reviewer="ann").run_test() as pilot:
        await pilot.pause()
        screen = pilot.app.screen
        assert screen.item.generation_id == 1
        await pilot.press("2")  # A: pick sample 2 of 3
        assert screen.item.generation_id == 4
        await pilot.press("3", "u")  # B: pick sample 3, then undo it
        assert screen.item.generation_id == 4
        await pilot.press("e")  # B: edit sample 1 (saved = accepted with the edit)
        await pilot.pause()
        pilot.app.screen.query_one("TextArea").text = "Cooking saves money and keeps you healthy."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert screen.item.generation_id == 5
        await pilot.press("R")  # B: reject sample 2 with a reason
        await pilot.pause()
        assert type(pilot.app.screen).__name__ == "ReasonScreen"
        await pilot.press("1")
        await pilot.pause()
        assert screen.item.generation_id == 6
        await pilot.press("a")  # B3 accepted
        assert screen.item is None  # nothing left to review

    with open_store(db) as store:
        current = {r[0]: (r[1], r[2], r[3]) for r in store.query(
            "SELECT g.id, g.decision, rv.edited_response, rv.reason FROM generations g "
            "LEFT JOIN reviews rv ON rv.id = g.review_id ORDER BY g.id")}
    edited = "Cooking saves money and keeps you healthy."
    assert current == {1: ("reject", None, None), 2: ("accept", None, None), 3: ("reject", None, None),
                       4: ("accept", edited, None), 5: ("reject", None, "wrong"), 6: ("accept", None, None)}

    prompt = {g: f"Instruction: {INSTRUCTIONS[(g - 1) // 3]}\nResponse:" for g in range(1, 7)}
    answer = {g: " " + done[g].strip() for g in done} | {4: " " + edited}

    records, manifest = export(tmp_path, "prompt-completion")
    assert records == [{"prompt": prompt[g], "completion": answer[g]} for g in (2, 4, 6)]
    assert [(d["kind"], d["id"]) for d in manifest["derivation"]] == [("pick", 2), ("edit", 4), ("accept", 6)]

    records, manifest = export(tmp_path, "dpo")
    expected = [(kind, c, r) for kind, c, r in (("pick", 2, 1), ("pick", 2, 3), ("edit", 4, 4))
                if answer[c] != (" " + done[r].strip())]  # identical texts make no pair
    assert records == [{"prompt": prompt[c], "chosen": answer[c], "rejected": " " + done[r].strip()}
                       for _, c, r in expected]
    assert [(d["kind"], d["id"], d["rejected_id"]) for d in manifest["derivation"]] == expected
    assert all(d["id"] != 6 for d in manifest["derivation"])  # the undone pick of B3 made no pair

    records, manifest = export(tmp_path, "kto")
    labels = {1: False, 2: True, 3: False, 4: True, 5: False, 6: True}
    assert records == [{"prompt": prompt[g], "completion": answer[g], "label": label} for g, label in labels.items()]
    assert manifest["labels"] == {"true": 3, "false": 3}
    assert manifest["reject_reasons"] == {"none": 2, "wrong": 1}
    assert [d["kind"] for d in manifest["derivation"]] == ["reject", "pick", "reject", "edit", "reject", "accept"]

    records, manifest = export(tmp_path, "tokens")
    assert [r["id"] for r in records] == [2, 4, 6]
    sources = {d["id"]: d["ids"] for d in manifest["derivation"]}
    assert sources[4] == "tokenized: edited"
    assert any(s.startswith("generated") for s in sources.values())  # the model's own ids, where token edges allow
    eos = gemma.info().eos_id
    with open_store(db) as store:
        sampled = {r[0]: unpack_token_ids(r[1]) for r in store.query("SELECT id, completion_token_ids FROM generations")}
    for record in records:
        g, ids, mask = record["id"], record["input_ids"], record["completion_mask"]
        n = mask.index(1)
        assert mask == [0] * n + [1] * (len(ids) - n)
        assert ids[:n] == gemma.tokenize(prompt[g]) and ids[-1] == eos
        assert gemma.detokenize(ids[n:-1]) == answer[g]
        if sources[g] == "generated":
            assert contains(sampled[g], ids[n:-1])  # exactly as sampled
        elif sources[g].startswith("generated answer"):  # the format's " " tokenized, then the answer as sampled
            separator = gemma.tokenize(" ")[1 if gemma.info().add_bos else 0:]
            assert ids[n:n + len(separator)] == separator and contains(sampled[g], ids[n + len(separator):-1])
    assert sum(manifest["completion_ids"].values()) == 3

    stats = runner.invoke(app, ["stats", "--json"])
    assert json.loads(stats.output)["reject_reasons"] == {"none": 2, "wrong": 1}

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: nothing may download in a test
    datasets = pytest.importorskip("datasets")
    for fmt, columns in (("prompt-completion", ["prompt", "completion"]), ("dpo", ["prompt", "chosen", "rejected"]),
                         ("kto", ["prompt", "completion", "label"]), ("tokens", ["id", "input_ids", "completion_mask"])):
        loaded = datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"), split="train",
                                       cache_dir=str(tmp_path / "hf-cache"))
        assert loaded.column_names == columns and loaded.num_rows == len(export(tmp_path, fmt)[0])
