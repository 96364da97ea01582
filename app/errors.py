"""The errors a user can meet, as one small family: a message that names the thing, and an exit code.

Every command raises these (or a library error that `as_expected` maps onto them) and lets them go: the one
boundary in `gristmill.app.cli.main` prints the message as one line on stderr and exits with the code. Anything
else that escapes a command is a bug in gristmill and becomes a crash report (`gristmill.app.crash`).

Exit codes: 2 bad input or usage (the user can fix the command line, a file or the config), 1 a runtime failure
(the command was right; something failed while doing it), 130 interrupted.
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process the signal ended
_terminated: list[int] = []  # a SIGTERM arrived: the interrupt it raised ends with EXIT_TERMINATED


def stop_on_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler (`kill`, a scheduler, a container stopping): stop as Ctrl-C does, cleanups and all,
    and exit 143. It had ended the process on the spot: a half-written export's temporary file left, no word."""
    note_terminated()
    raise KeyboardInterrupt


def note_terminated() -> None:
    _terminated.append(1)


def interrupted_exit_code() -> int:
    return EXIT_TERMINATED if _terminated else EXIT_INTERRUPTED


class GristmillError(Exception):
    """An expected failure: `message` is what the user reads, on one line."""

    exit_code: ClassVar[int] = EXIT_RUNTIME

    def __init__(self, message: str):
        super().__init__(message)
        self.message = " ".join(message.split("\n"))  # one line, whatever a library put in it


class BadInput(GristmillError):
    """A file, an option, a config value or a path the user gave is wrong; fixing it fixes the command."""

    exit_code = EXIT_BAD_INPUT


class RuntimeFailure(GristmillError):
    """The command was right, but doing it failed (a disk, a server, too many failed items)."""

    exit_code = EXIT_RUNTIME


class Interrupted(GristmillError):
    """Ctrl-C: the message says what was kept."""

    exit_code = EXIT_INTERRUPTED


def as_expected(error: BaseException) -> GristmillError | None:
    """Map the typed errors of the layers below (which cannot import this module) onto the family.

    None means the error is not one gristmill expects: a bug, reported with a crash report.
    """
    from gristmill.app.config import ConfigError
    from gristmill.app.prompts import StyleError
    from gristmill.db.connection import StoreError
    from gristmill.models.base import EngineError

    if isinstance(error, GristmillError):
        return error
    if isinstance(error, KeyboardInterrupt):
        return Interrupted("interrupted")
    if isinstance(error, (ConfigError, StyleError, StoreError)):
        return BadInput(str(error))
    if isinstance(error, EngineError):
        return RuntimeFailure(str(error))
    if isinstance(error, sqlite3.OperationalError) and "malformed JSON" in str(error):  # json_each over a hand edit
        return BadInput(
            "database: a JSON column holds text that is not JSON (a hand edit?); `gristmill doctor` names the rows"
        )
    if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):  # past every wait and retry
        return RuntimeFailure(
            "database: another process holds it locked, readers too (a connection in exclusive locking mode, or a "
            "write that has not ended): run the command again once that process is done"
        )
    if isinstance(error, sqlite3.OperationalError):  # disk full, I/O error
        return RuntimeFailure(f"database: {error}")
    if type(error) is sqlite3.DatabaseError:  # "database disk image is malformed" found mid-command
        return RuntimeFailure(f"database: {error} (`gristmill doctor` runs an integrity check)")
    if isinstance(error, OSError):
        return RuntimeFailure(_os_message(error))
    return None


def _os_message(error: OSError) -> str:
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is not None:
        return f"{error.filename}: {reason}"
    return reason
