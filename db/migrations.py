"""Ordered, recorded schema migrations: a database made by an older gristmill opens in a newer one.

Each function runs once, in a transaction, and is recorded by name in `_sqlite_migrations`.
Never edit a released migration; append a new one.
"""

from __future__ import annotations

import re

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("gristmill")


def _execute_script(db: Database, script: str) -> None:
    """Run statements one by one: sqlite3's executescript() would COMMIT the migration's transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    _execute_script(
        db,
        """
        CREATE TABLE instructions (
            id INTEGER PRIMARY KEY,
            external_id TEXT,
            instruction TEXT NOT NULL,
            input TEXT NOT NULL DEFAULT '',
            instruction_type TEXT NOT NULL DEFAULT 'general',
            source TEXT,
            content_hash TEXT NOT NULL UNIQUE,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_instructions_type ON instructions(instruction_type);

        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            engine TEXT NOT NULL,
            model TEXT NOT NULL,
            model_fingerprint TEXT NOT NULL,
            style TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            seed INTEGER NOT NULL,
            version TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT
        );

        CREATE TABLE generations (
            id INTEGER PRIMARY KEY,
            instruction_id INTEGER NOT NULL REFERENCES instructions(id),
            run_id INTEGER NOT NULL REFERENCES runs(id),
            sample_index INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'done', 'refused', 'failed')),
            prompt TEXT,
            prompt_tokens INTEGER,
            prompt_token_ids_sha256 TEXT,
            completion TEXT,
            completion_tokens INTEGER,
            finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'eos')),
            seed INTEGER,
            flags TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT,
            UNIQUE (run_id, instruction_id, sample_index)
        );
        CREATE INDEX idx_generations_status ON generations(run_id, status, id);
        CREATE INDEX idx_generations_instruction ON generations(instruction_id);

        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY,
            generation_id INTEGER NOT NULL REFERENCES generations(id),
            decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'skip', 'undo')),
            edited_response TEXT,
            reviewer TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_reviews_generation ON reviews(generation_id, id);
        """,
    )


@MIGRATIONS()
def m002_run_identity(db: Database) -> None:
    """Runs remember their full settings so `generate` resumes the same run instead of starting a twin."""
    _execute_script(
        db,
        """
        ALTER TABLE runs ADD COLUMN config_hash TEXT;
        ALTER TABLE runs ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE runs ADD COLUMN samples INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX idx_runs_config ON runs(config_hash);
        ALTER TABLE generations ADD COLUMN style_meta TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE generations ADD COLUMN timings TEXT NOT NULL DEFAULT '{}';
        """,
    )


@MIGRATIONS()
def m003_review_state(db: Database) -> None:
    """The review log stays append-only; `generations.decision` caches its current answer.

    The cache is written in the same transaction as the review row, so it can never disagree with
    the log, and it lets the review queue page through a million generations by index.
    An `undo` row names the review it cancels in `undoes_review_id`; rows written by one reviewer
    action (best-of-N accepts one sample and rejects its siblings) share an `action_id`, so one undo
    takes the whole action back.
    """
    _execute_script(
        db,
        """
        ALTER TABLE reviews ADD COLUMN undoes_review_id INTEGER REFERENCES reviews(id);
        ALTER TABLE reviews ADD COLUMN action_id TEXT;
        ALTER TABLE generations ADD COLUMN decision TEXT;
        ALTER TABLE generations ADD COLUMN review_id INTEGER;
        CREATE INDEX idx_generations_queue ON generations(status, decision, id);
        CREATE INDEX idx_reviews_reviewer ON reviews(reviewer, id);
        """,
    )
    # Databases made before this migration may already hold reviews: derive the cache from the log.
    db.execute(
        """
        UPDATE generations SET (decision, review_id) = (
            SELECT r.decision, r.id FROM reviews r
            WHERE r.generation_id = generations.id AND r.decision != 'undo'
            ORDER BY r.id DESC LIMIT 1)
        WHERE id IN (SELECT generation_id FROM reviews)
        """
    )


@MIGRATIONS()
def m004_run_style(db: Database) -> None:
    """A run keeps its style's whole content (JSON), so resuming and exporting never re-read a style file.

    Runs made before this migration have NULL here; they fall back to their style's name or path.
    """
    db.execute("ALTER TABLE runs ADD COLUMN style_definition TEXT")


# The review log's rules, in SQL, for one generation `{g}`: replay its rows in id order, keeping the set
# of decisions in force (a JSON array). A decision joins the set; an `undo` naming `undoes_review_id`
# removes that row (a no-op if it is not in force); an `undo` without a target removes the latest
# decision in force at that point. Each row of the result says which decision an undo cancelled.
_CANCELLED = """CASE WHEN log.decision != 'undo' THEN NULL
        WHEN log.target IS NOT NULL THEN (SELECT value FROM json_each(replay.forced) WHERE value = log.target)
        ELSE (SELECT max(value) FROM json_each(replay.forced)) END"""
_REPLAY = f"""
    SELECT cancelled, undo_id, {{g}} FROM (
        WITH RECURSIVE
        log(n, id, decision, target) AS (
            SELECT row_number() OVER (ORDER BY id), id, decision, undoes_review_id
            FROM reviews WHERE generation_id = {{g}}),
        replay(n, forced, undo_id, cancelled) AS (
            SELECT 0, json_array(), NULL, NULL
            UNION ALL
            SELECT log.n,
                   CASE WHEN log.decision != 'undo' THEN json_insert(replay.forced, '$[#]', log.id)
                        ELSE (SELECT json_group_array(value) FROM json_each(replay.forced)
                              WHERE value IS NOT ({_CANCELLED})) END,
                   log.id, {_CANCELLED}
            FROM replay JOIN log ON log.n = replay.n + 1)
        SELECT cancelled, undo_id FROM replay WHERE cancelled IS NOT NULL)"""
_REFRESH = f"""
    DELETE FROM review_cancellations WHERE generation_id = {{g}};
    INSERT INTO review_cancellations (review_id, undo_id, generation_id) {_REPLAY};
    UPDATE generations SET (decision, review_id) = (
        SELECT r.decision, r.id FROM reviews r
        WHERE r.generation_id = {{g}} AND r.decision != 'undo'
          AND NOT EXISTS (SELECT 1 FROM review_cancellations c WHERE c.review_id = r.id)
        ORDER BY r.id DESC LIMIT 1)
    WHERE id = {{g}};"""


@MIGRATIONS()
def m005_review_log_triggers(db: Database) -> None:
    """The database itself keeps `generations.decision`/`review_id` in step with the `reviews` log.

    Whoever writes `reviews` (gristmill, sqlite3, Datasette, a script), triggers replay that
    generation's log and rewrite its cache, so export, stats and the review queue see every row.
    `review_cancellations` records which decision each `undo` cancelled (derived, like the cache):
    an undo row without `undoes_review_id` (older databases, hand-written rows) cancels the latest
    decision still in force before it. Appending a decision, the common case, takes a fast path.
    Then every cache value is derived again from the log (m003's backfill ignored undo rows).
    """
    _execute_script(
        db,
        """
        CREATE TABLE review_cancellations (
            review_id INTEGER PRIMARY KEY,
            undo_id INTEGER NOT NULL,
            generation_id INTEGER NOT NULL
        );
        CREATE INDEX idx_review_cancellations_generation ON review_cancellations(generation_id);
        CREATE INDEX IF NOT EXISTS idx_reviews_undoes ON reviews(undoes_review_id) WHERE undoes_review_id IS NOT NULL;
        CREATE INDEX idx_reviews_undo ON reviews(generation_id) WHERE decision = 'undo'
        """,
    )
    # _execute_script splits on ';', so each trigger (whose body holds several statements) is one execute.
    db.execute(
        """CREATE TRIGGER reviews_append_decision AFTER INSERT ON reviews
        WHEN NEW.decision != 'undo' AND NOT EXISTS (
            SELECT 1 FROM reviews WHERE generation_id = NEW.generation_id AND id > NEW.id)
        BEGIN
            UPDATE generations SET decision = NEW.decision, review_id = NEW.id WHERE id = NEW.generation_id;
        END"""
    )
    db.execute(
        f"""CREATE TRIGGER reviews_insert_other AFTER INSERT ON reviews
        WHEN NEW.decision = 'undo' OR EXISTS (
            SELECT 1 FROM reviews WHERE generation_id = NEW.generation_id AND id > NEW.id)
        BEGIN {_REFRESH.format(g="NEW.generation_id")} END"""
    )
    db.execute(f"""CREATE TRIGGER reviews_delete AFTER DELETE ON reviews BEGIN
            {_REFRESH.format(g="OLD.generation_id")}
        END""")
    db.execute(
        f"""CREATE TRIGGER reviews_update AFTER UPDATE ON reviews BEGIN
            {_REFRESH.format(g="OLD.generation_id")}
            {_REFRESH.format(g="NEW.generation_id")}
        END"""
    )
    # Re-derive everything: cancellations where the log holds undo rows, then every cache value.
    for (generation_id,) in db.execute("SELECT DISTINCT generation_id FROM reviews WHERE decision = 'undo'").fetchall():
        db.execute(
            f"INSERT INTO review_cancellations (review_id, undo_id, generation_id) {_REPLAY.format(g=':g')}",
            {"g": generation_id},
        )
    db.execute(
        """UPDATE generations SET (decision, review_id) = (
            SELECT r.decision, r.id FROM reviews r
            WHERE r.generation_id = generations.id AND r.decision != 'undo'
              AND NOT EXISTS (SELECT 1 FROM review_cancellations c WHERE c.review_id = r.id)
            ORDER BY r.id DESC LIMIT 1)
        WHERE id IN (SELECT generation_id FROM reviews) OR decision IS NOT NULL OR review_id IS NOT NULL"""
    )


@MIGRATIONS()
def m008_token_ids_and_reject_reasons(db: Database) -> None:
    """Generations keep their sampled token ids; a reject may carry a reason.

    `completion_token_ids` is a BLOB of little-endian uint32 (4 bytes a token, about half the same ids
    as JSON text), so the `tokens` export can reproduce the answer exactly as generated. Rows
    from before this migration have NULL and are tokenized from text at export. `reviews.reason` is
    one key from the configured list (`[review] reject_reasons`), or NULL.
    """
    _execute_script(
        db,
        """
        ALTER TABLE generations ADD COLUMN completion_token_ids BLOB;
        ALTER TABLE reviews ADD COLUMN reason TEXT
        """,
    )


@MIGRATIONS()
def m006_claims_and_run_identity(db: Database) -> None:
    """Claims on work items, one current run per identity, and the indexes that keep a million rows fast.

    - `claims`: a generator claims the items it is about to generate, with a lease; a second process on the
      same run skips them, and a killed process's claims lapse (its lease ends, or its pid is gone).
    - `runs.identity`: the canonical digest of what can change an output. Unique, so two processes
      starting the same new run create one; `--new-run` moves it to the new run. Runs from before this
      migration have none: the first `generate` with the same settings finds them by their old
      `config_hash` and gives them one (app.generate.open_run).
    - `generations.refusal`: why an item was refused (`length` or `control`), so `--retry-refused` retries
      exactly the items a larger context can fix. Backfilled from the refusal text of older rows.
    - Indexes: undo looks up reviews by the review they cancel (m005 made that one) and by action.
    """
    _execute_script(
        db,
        """
        CREATE TABLE claims (
            generation_id INTEGER PRIMARY KEY REFERENCES generations(id),
            run_id INTEGER NOT NULL REFERENCES runs(id),
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE INDEX idx_claims_run ON claims(run_id, owner);
        ALTER TABLE runs ADD COLUMN identity TEXT;
        CREATE UNIQUE INDEX idx_runs_identity ON runs(identity);
        ALTER TABLE generations ADD COLUMN refusal TEXT;
        UPDATE generations SET refusal = CASE WHEN error LIKE '%the context of%' THEN 'length'
                                              ELSE 'control' END
            WHERE status = 'refused';
        CREATE INDEX IF NOT EXISTS idx_reviews_undoes ON reviews(undoes_review_id)
            WHERE undoes_review_id IS NOT NULL;
        CREATE INDEX idx_reviews_action ON reviews(action_id)
        """,
    )


_SEARCH_ROW = "SELECT {gid}, i.instruction, i.input, COALESCE({completion}, '') FROM instructions i WHERE i.id = {iid}"
SEARCH_TRIGGERS = (
    # contentless (content=''): the index stores no second copy of the text; a 'delete' must give the
    # exact values that were indexed, which the triggers below always have at hand
    f"""CREATE TRIGGER search_index_generation_insert AFTER INSERT ON generations BEGIN
          INSERT INTO search_index (rowid, instruction, input, output)
          {_SEARCH_ROW.format(gid="new.id", completion="new.completion", iid="new.instruction_id")};
        END""",
    f"""CREATE TRIGGER search_index_generation_update AFTER UPDATE OF completion, instruction_id ON generations BEGIN
          INSERT INTO search_index (search_index, rowid, instruction, input, output)
          SELECT 'delete', * FROM ({
        _SEARCH_ROW.format(gid="old.id", completion="old.completion", iid="old.instruction_id")
    });
          INSERT INTO search_index (rowid, instruction, input, output)
          {_SEARCH_ROW.format(gid="new.id", completion="new.completion", iid="new.instruction_id")};
        END""",
    f"""CREATE TRIGGER search_index_generation_delete AFTER DELETE ON generations BEGIN
          INSERT INTO search_index (search_index, rowid, instruction, input, output)
          SELECT 'delete', * FROM ({
        _SEARCH_ROW.format(gid="old.id", completion="old.completion", iid="old.instruction_id")
    });
        END""",
    """CREATE TRIGGER search_index_instruction_update AFTER UPDATE OF instruction, input ON instructions BEGIN
          INSERT INTO search_index (search_index, rowid, instruction, input, output)
          SELECT 'delete', g.id, old.instruction, old.input, COALESCE(g.completion, '')
          FROM generations g WHERE g.instruction_id = old.id;
          INSERT INTO search_index (rowid, instruction, input, output)
          SELECT g.id, new.instruction, new.input, COALESCE(g.completion, '')
          FROM generations g WHERE g.instruction_id = new.id;
        END""",
)


@MIGRATIONS()
def m009_search_index(db: Database) -> None:
    """Full-text search over every generation's instruction, input and output (SQLite FTS5).

    The index is keyed by generation id and kept in step by triggers, so rows written by any writer
    (gristmill, sqlite3, a script) are found; rows written before this migration are indexed here.
    """
    # prefix indexes make `ab*` and `abc*` one doclist read instead of a merge of every matching term
    db.execute("""CREATE VIRTUAL TABLE search_index USING fts5(
                      instruction, input, output, content='', tokenize='unicode61 remove_diacritics 2',
                      prefix='2 3')""")
    for trigger in SEARCH_TRIGGERS:
        db.execute(trigger)
    db.execute("""INSERT INTO search_index (rowid, instruction, input, output)
                  SELECT g.id, i.instruction, i.input, COALESCE(g.completion, '')
                  FROM generations g JOIN instructions i ON i.id = g.instruction_id""")


class MigrationError(Exception):
    """A migration cannot be applied to this database as it is; the message says what and what to do."""


# How m001 declared the table and its id, and how tools that rebuild a table (sqlite-utils `transform`, DB Browser)
# write them back: the name quoted, the column in brackets or quotes.
_GENERATIONS_TABLE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(?:\"generations\"|\[generations\]|`generations`|generations)\s*\(", re.I
)
_ID_COLUMN = re.compile(
    r"((?<!\w)[\"\[`]?id[\"\]`]?\s+INTEGER(?:\s+NOT\s+NULL)?\s+PRIMARY\s+KEY(?:\s+(?:ASC|DESC))?)(\s+AUTOINCREMENT)?",
    re.I,
)
# the table-level form DB Browser writes: "id" INTEGER NOT NULL, ..., PRIMARY KEY("id" AUTOINCREMENT)
_ID_KEY_AUTOINCREMENT = re.compile(r"PRIMARY\s+KEY\s*\(\s*(?<!\w)[\"\[`]?id[\"\]`]?\s+AUTOINCREMENT\s*\)", re.I)


@MIGRATIONS()
def m010_generation_ids_never_reused(db: Database) -> None:
    """Generation ids are AUTOINCREMENT: a new generation never takes the id of one deleted by hand.

    Deleting generations with sqlite3 leaves their `reviews` rows (the log is never cut). Without
    AUTOINCREMENT SQLite gives the next insert max(id) + 1, so after deleting the newest rows a new
    generation inherited their decisions: shown as reviewed, exported as accepted, never seen by anyone.
    The table is rebuilt (SQLite's documented procedure; `_migrate` turns foreign keys off around every
    migration, and the legacy rename leaves the other tables' triggers naming `generations` alone), and
    the counter starts above every id any table still refers to.
    """
    (table_sql,) = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'generations'").fetchone()
    id_column = _ID_COLUMN.search(table_sql)
    already = _ID_KEY_AUTOINCREMENT.search(table_sql) is not None or (id_column is not None and id_column.group(2))
    if not _GENERATIONS_TABLE.match(table_sql) or (id_column is None and not already):
        raise MigrationError(
            "its generations table is not declared as gristmill declares it (no `id INTEGER PRIMARY KEY` column "
            "found), so gristmill cannot make its ids AUTOINCREMENT; restore the table's definition"
        )
    if not already and id_column is not None:  # not AUTOINCREMENT yet (a tool may have rebuilt it so already)
        dependents = [
            sql
            for (sql,) in db.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'generations' AND type IN ('index', 'trigger') "
                "AND sql IS NOT NULL"
            ).fetchall()
        ]
        rebuilt = _GENERATIONS_TABLE.sub("CREATE TABLE generations_rebuilt (", table_sql, count=1)
        rebuilt = _ID_COLUMN.sub(lambda m: m.group(1) + " AUTOINCREMENT", rebuilt, count=1)
        db.execute("PRAGMA legacy_alter_table = ON")
        try:
            db.execute(rebuilt)
            db.execute("INSERT INTO generations_rebuilt SELECT * FROM generations")
            db.execute("DROP TABLE generations")
            db.execute("ALTER TABLE generations_rebuilt RENAME TO generations")
        finally:
            db.execute("PRAGMA legacy_alter_table = OFF")
        for sql in dependents:
            db.execute(sql)
    db.execute(
        """UPDATE sqlite_sequence SET seq = max(seq,
               (SELECT coalesce(max(generation_id), 0) FROM reviews),
               (SELECT coalesce(max(generation_id), 0) FROM review_cancellations),
               (SELECT coalesce(max(generation_id), 0) FROM claims))
           WHERE name = 'generations'"""
    )
    db.execute(
        """INSERT INTO sqlite_sequence (name, seq) SELECT 'generations', max(
               (SELECT coalesce(max(id), 0) FROM generations),
               (SELECT coalesce(max(generation_id), 0) FROM reviews),
               (SELECT coalesce(max(generation_id), 0) FROM review_cancellations),
               (SELECT coalesce(max(generation_id), 0) FROM claims))
           WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'generations')"""
    )


_CURRENT_REVIEW = """SELECT r.id FROM reviews r
    WHERE r.generation_id = NEW.id AND r.decision != 'undo'
      AND NOT EXISTS (SELECT 1 FROM review_cancellations c WHERE c.review_id = r.id)
    ORDER BY r.id DESC LIMIT 1"""


@MIGRATIONS()
def m011_decision_cache_only_from_the_log(db: Database) -> None:
    """`generations.decision` and `review_id` change only as the `reviews` log says.

    An `UPDATE generations SET decision = 'accept'` typed in sqlite3 changed the cache and not the log: stats
    counted the accepts and export (which follows the log) left them out, without a word. Such an update is now
    refused with the way to do it (a row in `reviews`); the triggers that replay the log write only what it
    says, so they pass. Every cache value is derived from the log again first, undoing earlier hand edits.
    """
    current = _CURRENT_REVIEW.replace("NEW.id", "generations.id")
    db.execute(  # only the rows whose cache the log does not say (a hand edit's)
        f"""UPDATE generations SET (decision, review_id) = (SELECT r.decision, r.id FROM reviews r WHERE r.id = ({current}))
        WHERE review_id IS NOT ({current})
           OR decision IS NOT (SELECT r.decision FROM reviews r WHERE r.id = generations.review_id)"""
    )
    db.execute(
        f"""CREATE TRIGGER generations_decision_is_derived BEFORE UPDATE OF decision, review_id ON generations
        WHEN NEW.review_id IS NOT ({_CURRENT_REVIEW})
          OR NEW.decision IS NOT (SELECT decision FROM reviews WHERE id = NEW.review_id)
        BEGIN
            SELECT RAISE(ABORT, 'generations.decision and review_id follow the reviews log: insert a row into reviews (generation_id, decision, reviewer, created_at) instead');
        END"""
    )


def migration_names() -> list[str]:
    """Every migration this version knows, in order (what a new database gets)."""
    return [m.name for m in MIGRATIONS.pending(Database(memory=True))]
