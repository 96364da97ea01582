"""The report gristmill writes when it hits a bug in itself (in the manner of harlequin's `crash.py`).

A user never sees a raw traceback: it says nothing about what to do next, and Textual renders one with the
frames' locals, which would put a prompt, a model output or an API key on the terminal. Instead the traceback
(frames only, never locals) goes to a report file in the state directory, redacted, and the terminal gets one
line: what broke, where, and where the report is.

Headless and importing little: a crash handler that must import the world to report a crash is a new place
to crash.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import traceback
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the crash handler imports little; Textual only for the type
    from textual.app import App

KEEP_REPORTS = 10  # distinct names, so a crash loop cannot overwrite the report of the first crash
MAX_QUOTED = 80  # a quoted string longer than this in a report is elided: prompts and outputs stay private

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
]
_QUOTED = re.compile(rf"'((?:[^'\\\n]|\\.){{{MAX_QUOTED},}})'|\"((?:[^\"\\\n]|\\.){{{MAX_QUOTED},}})\"")


def root_cause(error: BaseException) -> BaseException:
    """The error a report should be about: Textual's `WorkerFailed` wraps the real one in `.error`."""
    wrapped = getattr(error, "error", None)
    return wrapped if isinstance(wrapped, BaseException) else error


def redact(text: str) -> str:
    """Mask API keys, bearer tokens and the value of GRISTMILL_API_KEY; elide long quoted strings (prompts)."""
    key = os.environ.get("GRISTMILL_API_KEY")
    if key:
        text = text.replace(key, "<GRISTMILL_API_KEY>")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "<redacted>", text)
    return _QUOTED.sub(lambda m: f"'<{len(m.group(1) or m.group(2))} chars elided>'", text)


def where(error: BaseException) -> str:
    """`file.py:line in function` of the innermost frame that is gristmill's own (else the innermost)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown location"
    ours = [
        f
        for f in frames
        if "gristmill" in f.filename or "/app/" in f.filename or "/db/" in f.filename or "/models/" in f.filename
    ]
    frame = (ours or frames)[-1]
    parts = Path(frame.filename).parts
    return f"{'/'.join(parts[-2:])}:{frame.lineno} in {frame.name}"


def build_report(error: BaseException, argv: list[str]) -> str:
    cause = root_cause(error)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    from gristmill import __version__

    sections = [
        f"gristmill crash report, written {now}.",
        "Review this file before sharing it: long quoted strings (prompts, outputs) and keys are masked.",
        "",
        f"gristmill {__version__}, Python {platform.python_version()}, {platform.platform()}",
        f"command: {' '.join(argv)}",
        "",
        "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)),
    ]
    if cause is not error:
        sections += ["raised as:", "".join(traceback.format_exception(type(error), error, error.__traceback__))]
    return redact("\n".join(sections))


def write_report(report: str, directory: Path | None = None) -> Path | None:
    """Write the report and prune old ones; None if it could not be written. Raises nothing."""
    try:
        if directory is None:
            from gristmill.locations import state_dir

            directory = state_dir()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = directory / f"crash-{stamp}-{os.getpid()}.log"
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(report, encoding="utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the handler of a crash must not crash
        return None
    try:
        for stale in sorted(directory.glob("crash-*.log"), reverse=True)[KEEP_REPORTS:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass
    return path


def crash_line(error: BaseException, report_path: Path | None) -> str:
    """The one line the terminal gets: what broke, where, and where the report is."""
    cause = root_cause(error)
    message = redact(" ".join(str(cause).split()))
    if len(message) > 160:
        message = message[:157] + "..."
    what = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
    report = f"crash report: {report_path}" if report_path else "no crash report could be written"
    return f"gristmill: internal error (a bug in gristmill): {what} at {where(cause)}; {report}"


def report_crash(error: BaseException, argv: list[str] | None = None) -> str:
    """Write the report and return the terminal line."""
    try:
        path = write_report(build_report(error, list(argv if argv is not None else sys.argv)))
    except Exception:  # noqa: BLE001
        path = None
    return crash_line(error, path)


class _AlreadyReported(Exception):
    """Handed to Textual in place of a crash: it renders as nothing, so Textual prints no traceback (with
    locals) on the terminal; the real error is raised again after the app exits and reported here."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error

    def __rich__(self) -> str:
        return ""


def guard_app(app: App) -> list[BaseException]:
    """Route an unhandled error of a Textual app (a handler, a worker) to the crash report, not the terminal.

    Returns the list the error lands in; the caller raises it after `run()` so the one boundary reports it.
    Textual offers no public hook for this (harlequin overrides the same method): it still exits the app its
    own way, only with nothing to print.
    """
    failures: list[BaseException] = []
    original = app._handle_exception

    def handle(error: Exception) -> None:
        cause = root_cause(error)
        if not failures:
            failures.append(cause)
        original(_AlreadyReported(cause))

    app._handle_exception = handle  # type: ignore[method-assign]  # replaced on this instance: no public hook
    return failures
