"""Ordered, recorded schema migrations: a database made by an older gristmill opens in a newer one.

Each function runs once, in a transaction, and is recorded by name in `_sqlite_migrations`.
Never edit a released migration; append a new one.
"""

from __future__ import annotations

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
        """
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
        """
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
        """
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
          SELECT 'delete', * FROM ({_SEARCH_ROW.format(gid="old.id", completion="old.completion",
                                                          iid="old.instruction_id")});
          INSERT INTO search_index (rowid, instruction, input, output)
          {_SEARCH_ROW.format(gid="new.id", completion="new.completion", iid="new.instruction_id")};
        END""",
    f"""CREATE TRIGGER search_index_generation_delete AFTER DELETE ON generations BEGIN
          INSERT INTO search_index (search_index, rowid, instruction, input, output)
          SELECT 'delete', * FROM ({_SEARCH_ROW.format(gid="old.id", completion="old.completion",
                                                          iid="old.instruction_id")});
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
