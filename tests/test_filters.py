"""The shared filter clauses (`db/filters.py`) against an oracle, and the four readers that use them agreeing.

The expected rows are computed here in Python from the generations as stored (the review in force read
through `generations.review_id`); each clause kind is checked on edge values under every join a reader
uses, and the same filter must give the same rows through the export, the training export (kto), the
review queue and browse wherever those are meant to agree.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gristmill.app.generate import RunSettings, open_run, run_generation
from gristmill.app.ingest import import_file
from gristmill.app.review import decide, undo
from gristmill.db import browse, exports, filters, open_store, training
from gristmill.db.browse import BrowseFilter
from gristmill.db.connection import Store
from gristmill.db.exports import ExportFilter
from gristmill.db.filters import UNREVIEWED, Filter, Join
from gristmill.db.reviews import QueueFilter, neighbour
from gristmill.models import GenerationParams
from gristmill.models.fake import FakeEngine
from tests.conftest import write

QUOTED = "o'brien"
HOSTILE = "x') OR 1=1 --"  # a reviewer name that would widen the filter if it were put into the SQL text
EDIT = "An edited answer, much longer than the model's own."
JOINS = {
    "generations only (review queue)": filters.GENERATIONS_ONLY,
    "instruction and run (browse)": filters.WITH_INSTRUCTION_AND_RUN,
    "review joined, completion length": Join(),
    "review joined, response length (exports)": filters.WITH_REVIEW,
}
FROM = {  # the review is LEFT JOINed so every join reads the same rows: only the clause text differs
    "g": "generations g",
    "gir": "generations g JOIN instructions i ON i.id = g.instruction_id JOIN runs r ON r.id = g.run_id",
    "girv": "generations g JOIN instructions i ON i.id = g.instruction_id JOIN runs r ON r.id = g.run_id"
    " LEFT JOIN reviews rv ON rv.id = g.review_id",
}


def source(join: Join) -> str:
    return FROM["girv" if join.review else "gir" if join.instruction else "g"]


@pytest.fixture
def db(tmp_path) -> Path:
    """Two runs (completion: 3 instructions x 2 samples; few-shot: 3 x 1), reviewed by three reviewers.

    Flags come from the replies: an empty one, a repetitive one, a cut one (truncated), a non-ASCII one.
    The flagged ones are accepted too. One accept carries an edit longer than its completion; one
    decision is overridden by another reviewer; one is undone.
    """
    path = tmp_path / "test.db"
    with open_store(path) as store:
        items = [("Capital of France?", "fact"), ("What is 2+2?", "math"), ("Write about rain.", "creative")]
        import_file(
            store,
            write(
                tmp_path / "i.jsonl",
                "\n".join(json.dumps({"instruction": t, "instruction_type": k}) for t, k in items) + "\n",
            ),
        )
        params = GenerationParams(max_tokens=30)
        first = FakeEngine(
            replies=[" Paris.", "", " Four.", " a b c a b c a b c a b c a b c a b c", " Rain.", " Pluie fine, café."]
        )
        run, style, settings = open_run(store, first, RunSettings(samples=2, params=params))
        run_generation(store, first, run, style, settings)
        second = FakeEngine(replies=[" Lyon?", " Five.", " A long reply that runs on past the token limit, cut."])
        run, style, settings = open_run(store, second, RunSettings(style="few-shot", params=params))
        run_generation(store, second, run, style, settings)
        decide(store, 1, "accept", "ann")
        decide(store, 2, "accept", QUOTED)  # the empty completion
        decide(store, 3, "accept", QUOTED, EDIT)
        decide(store, 4, "skip", "ann")
        decide(store, 4, "accept", QUOTED)  # overrides ann's skip: the review in force is o'brien's
        decide(store, 5, "accept", HOSTILE)
        decide(store, 6, "reject", QUOTED, reason="wrong")
        decide(store, 7, "accept", "ann")
        decide(store, 8, "reject", "ann")
        decide(store, 9, "accept", "ann")
        assert undo(store, "ann") == [9]
    return path


def stored(store: Store) -> list[dict]:
    """Every generation with what the filters look at, read plainly (the oracle's input)."""
    rows = store.conn.execute(
        f"""SELECT g.id, g.status, g.decision, i.instruction_type, r.style, g.run_id, rv.reviewer, g.flags,
                   g.completion, rv.edited_response FROM {FROM["girv"]} ORDER BY g.id"""
    ).fetchall()
    return [dict(r) for r in rows]


def expected(rows: list[dict], f: Filter, response_length: bool = False) -> list[int]:
    def keep(row: dict) -> bool:
        flags = json.loads(row["flags"] or "[]")
        text = row["edited_response"] if response_length and row["edited_response"] is not None else row["completion"]
        return (
            (not f.status or row["status"] == f.status)
            and (
                f.decision is None
                or (row["decision"] is None if f.decision == UNREVIEWED else row["decision"] == f.decision)
            )
            and (not f.instruction_type or row["instruction_type"] == f.instruction_type)
            and (not f.style or row["style"] == f.style)
            and (f.run_id is None or row["run_id"] == f.run_id)
            and (not f.reviewer or row["reviewer"] == f.reviewer)
            and (not f.flag or f.flag in flags)
            and not any(x in flags for x in f.exclude_flags)
            and (f.min_chars is None or (text is not None and len(text) >= f.min_chars))
            and (f.max_chars is None or (text is not None and len(text) <= f.max_chars))
        )

    return [r["id"] for r in rows if keep(r)]


def through_clauses(store: Store, f: Filter, join: Join) -> list[int]:
    where, params = filters.where_sql(f, join)
    return [r[0] for r in store.conn.execute(f"SELECT g.id FROM {source(join)} WHERE {where} ORDER BY g.id", params)]


def edge_filters(rows: list[dict]) -> list[Filter]:
    """One filter per clause kind on its edge values, plus combinations."""
    lengths = sorted({len(r["completion"]) for r in rows})
    mid = lengths[len(lengths) // 2]
    flags = sorted({flag for r in rows for flag in json.loads(r["flags"] or "[]")})
    assert {"empty", "repetition", "truncated"} <= set(flags), flags  # the fixture exercises the flag clauses
    out = [
        Filter(),
        Filter(status=""),
        Filter(status="done"),
        Filter(status="failed"),
        Filter(decision=""),  # the one text field where "" is a value: the queue's state is always matched
        Filter(decision=UNREVIEWED),
        Filter(decision="accept"),
        Filter(decision="skip"),
        Filter(instruction_type=""),
        Filter(instruction_type="math"),
        Filter(instruction_type="no such type"),
        Filter(style=""),
        Filter(style="few-shot"),
        Filter(run_id=1),
        Filter(run_id=2),
        Filter(run_id=0),  # zero narrows: no run has it
        Filter(reviewer=""),
        Filter(reviewer="ann"),
        Filter(reviewer=QUOTED),
        Filter(reviewer=HOSTILE),
        Filter(reviewer="x' OR '1'='1"),
        Filter(flag=""),
        Filter(flag="no such flag"),
        Filter(exclude_flags=()),
        Filter(exclude_flags=("no such flag",)),
        Filter(exclude_flags=tuple(flags)),
        Filter(exclude_flags=("",)),
        Filter(min_chars=0),
        Filter(max_chars=0),  # only the empty completion
        Filter(min_chars=-1, max_chars=-1),
        Filter(min_chars=mid),  # inclusive: the completion of exactly `mid` characters is in
        Filter(max_chars=mid),
        Filter(min_chars=mid, max_chars=mid),
        Filter(min_chars=mid + 1, max_chars=mid),  # crossed bounds: nothing
        Filter(min_chars=len(EDIT)),  # only an edit is this long
        Filter(decision="accept", style="completion", exclude_flags=("empty",), max_chars=mid),
        Filter(status="done", instruction_type="creative", reviewer="ann", run_id=2),
    ]
    out += [Filter(flag=flag) for flag in flags]
    out += [Filter(exclude_flags=(flag,)) for flag in flags]
    return out


def test_every_clause_kind_matches_the_oracle_under_every_join(db):
    with open_store(db) as store:
        rows = stored(store)
        assert len(rows) == 9 and [r["decision"] for r in rows] == [
            "accept", "accept", "accept", "accept", "accept", "reject", "accept", "reject", None,
        ]  # fmt: skip
        seen_nonempty = 0
        for f in edge_filters(rows):
            for name, join in JOINS.items():
                want = expected(rows, f, join.response_length)
                assert through_clauses(store, f, join) == want, (name, f)
                seen_nonempty += bool(want) and want != [r["id"] for r in rows]
        assert seen_nonempty > 40  # most filters narrow to a proper, non-empty subset: the check has teeth


def test_values_are_bound_never_written_into_the_sql():
    f = Filter(
        status="a'", decision="b'", instruction_type="c'", style="d'", run_id=7, reviewer=HOSTILE, flag="e'",
        exclude_flags=("f'", "g'"), min_chars=3, max_chars=9,
    )  # fmt: skip
    for join in JOINS.values():
        sql, params = filters.where_sql(f, join)
        assert "'" not in sql and "7" not in sql and "9" not in sql
        assert sql.count("?") == len(params) == 11
        assert params == ["a'", "b'", "c'", "d'", 7, HOSTILE, "e'", "f'", "g'", 3, 9]


def test_no_filter_is_no_clause_and_fixed_clauses_come_first():
    assert filters.where_sql(Filter(), filters.WITH_REVIEW) == ("1", [])
    assert filters.where_sql(Filter(run_id=0), filters.GENERATIONS_ONLY, "g.status = 'done'") == (
        "g.status = 'done' AND g.run_id = ?",
        [0],
    )
    assert filters.clauses(Filter(exclude_flags=()), filters.WITH_REVIEW) == ([], [])


def test_the_response_length_needs_the_review_joined():
    with pytest.raises(ValueError, match="review"):
        Join(review=None, response_length=True)


def test_each_readers_filter_carries_every_field_it_offers_to_the_shared_filter():
    """A field added to a reader's filter but forgotten in its `fields()` fails here."""
    shared = {f.name for f in dataclasses.fields(Filter)}
    for cls, renamed in ((QueueFilter, {"state": "decision"}), (ExportFilter, {}), (BrowseFilter, {})):
        for field in dataclasses.fields(cls):
            if field.name == "search":  # browse's full-text search drives its query: not a filter clause
                continue
            name = renamed.get(field.name, field.name)
            assert name in shared, (cls.__name__, field.name)
            value: object = (
                ("x", "y") if field.name == "exclude_flags" else 5 if "chars" in name or "id" in name else "z"
            )
            assert getattr(cls(**{field.name: value}).fields(), name) == value, (cls.__name__, field.name)
    assert QueueFilter(state="all").fields().decision is None
    assert QueueFilter().fields().decision == UNREVIEWED


def queue_ids(store: Store, queue: QueueFilter) -> list[int]:
    ids, gid = [], 0
    while (gid := neighbour(store, queue, after=gid)) is not None:
        ids.append(gid)
    assert ids[::-1] == list(_backwards(store, queue))  # paging back gives the same set
    return ids


def _backwards(store: Store, queue: QueueFilter):
    gid = 10**9
    while (gid := neighbour(store, queue, before=gid)) is not None:
        yield gid


def accepted_ids(store: Store, where: ExportFilter) -> list[int]:
    return [r["id"] for r in exports.accepted(store, where, batch=2)]


def kto_accept_ids(store: Store, where: ExportFilter) -> list[int]:
    return [r["id"] for r in training.labeled(store, where) if r["decision"] == "accept"]


def test_the_same_filter_gives_the_same_rows_through_export_training_queue_and_browse(db):
    with open_store(db) as store:
        rows = stored(store)
        common = [
            {},
            {"instruction_type": "fact"},
            {"instruction_type": "creative"},
            {"style": "completion"},
            {"style": "few-shot"},
            {"run_id": 1},
            {"run_id": 2},
            {"run_id": 0},
            {"instruction_type": "creative", "run_id": 1},
            {"max_chars": 6},
            {"min_chars": 6},
            {"min_chars": 0, "max_chars": 0},
        ]
        for fields in common:
            # the length bounds of an export count the edited text: the same set but for an edited accept
            exported = expected(rows, Filter(decision="accept", status="done", **fields), response_length=True)
            want = expected(rows, Filter(decision="accept", status="done", **fields))
            assert set(exported) ^ set(want) <= {3}, fields
            assert accepted_ids(store, ExportFilter(**fields)) == exported, fields
            assert kto_accept_ids(store, ExportFilter(**fields)) == exported, fields
            assert queue_ids(store, QueueFilter(state="accept", **fields)) == want, fields
            assert browse.done_ids(store, BrowseFilter(decision="accept", **fields)) == want, fields
            assert browse.count(store, BrowseFilter(decision="accept", status="done", **fields)) == len(want)
        assert accepted_ids(store, ExportFilter()) == [1, 2, 3, 4, 5, 7]

        # the reviewer: export, training and browse (the queue has no reviewer filter)
        for reviewer in ("ann", QUOTED, HOSTILE, "x' OR '1'='1", ""):
            want = expected(rows, Filter(decision="accept", reviewer=reviewer))
            assert accepted_ids(store, ExportFilter(reviewer=reviewer)) == want, reviewer
            assert kto_accept_ids(store, ExportFilter(reviewer=reviewer)) == want, reviewer
            assert browse.done_ids(store, BrowseFilter(decision="accept", reviewer=reviewer)) == want, reviewer
        assert accepted_ids(store, ExportFilter(reviewer=QUOTED)) == [2, 3, 4]
        assert accepted_ids(store, ExportFilter(reviewer=HOSTILE)) == [5]

        # flags: the export drops what the queue and browse pick out, and between them they cover every accept
        everything = accepted_ids(store, ExportFilter())
        for flag in ("empty", "repetition", "truncated", "no such flag"):
            dropped = accepted_ids(store, ExportFilter(exclude_flags=(flag,)))
            flagged = queue_ids(store, QueueFilter(state="accept", flag=flag))
            assert browse.done_ids(store, BrowseFilter(decision="accept", flag=flag)) == flagged
            assert kto_accept_ids(store, ExportFilter(exclude_flags=(flag,))) == dropped
            assert sorted(dropped + flagged) == everything, flag
            assert bool(flagged) == (flag != "no such flag"), flag

        # where they are meant to differ: an export's length bounds count the edited text, the queue's the
        # completion (generation 3 was accepted with an edit longer than any completion)
        long = len(EDIT)
        assert accepted_ids(store, ExportFilter(min_chars=long)) == [3]
        assert queue_ids(store, QueueFilter(state="accept", min_chars=long)) == []
        assert 3 not in accepted_ids(store, ExportFilter(max_chars=long - 1))
        assert 3 in queue_ids(store, QueueFilter(state="accept", max_chars=long - 1))
