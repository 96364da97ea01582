"""Route llama.cpp's native log lines into Python logging, so nothing native writes over the terminal."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("gristmill.llama_cpp")
log.addHandler(logging.NullHandler())  # with no file configured, drop lines rather than print them
# ggml_log_level in the llama.cpp that llama-cpp-python 0.3.x vendors: NONE, DEBUG, INFO, WARN, ERROR, CONT
_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_installed = None  # the ctypes callback must stay referenced for as long as llama.cpp may call it
_line: list[str] = []
_level = logging.DEBUG
# said once when a Ctrl-C is held (the command line sets it): loading a 20 GB model takes a while, and a key
# that seems to do nothing gets pressed again
on_held_interrupt: Callable[[], None] | None = None


def install() -> None:
    """Replace llama-cpp-python's callback (which prints to stderr) with one that logs."""
    global _installed
    if _installed is not None:
        return
    import llama_cpp
    import llama_cpp._logger  # noqa: F401  (sets its own callback on import; ours must come after)

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        global _level
        if level != 5:  # CONT continues the previous line at its level
            _level = _LEVELS.get(level, logging.DEBUG)
        _line.append(text.decode("utf-8", errors="replace"))
        if _line[-1].endswith("\n"):
            log.log(_level, "%s", "".join(_line).rstrip("\n"))
            _line.clear()

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    _installed = callback
    _keep_the_terminal()


class _Unredirected:
    """Stands in for llama-cpp-python's `suppress_stdout_stderr`, which points file descriptors 1 and 2 at
    /dev/null while a model loads: process-wide, so whatever another thread drew meanwhile (the app's screen
    while a model loads in its worker, a progress line) was lost, and the app's screen stayed stale until a
    resize. llama.cpp's own lines come through the callback above, so there is nothing left to hide."""

    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _keep_the_terminal() -> None:
    import llama_cpp._internals
    import llama_cpp.llama

    for module in (llama_cpp._internals, llama_cpp.llama):
        if hasattr(module, "suppress_stdout_stderr"):
            module.suppress_stdout_stderr = _Unredirected  # type: ignore[attr-defined]


@contextmanager
def interrupt_after_native_call() -> Iterator[Callable[[], bool]]:
    """Hold a Ctrl-C (or a SIGTERM) until the native call in the block returns, then raise it.

    While llama.cpp loads a model or makes a context it logs hundreds of lines through the callback above, and
    Python runs a SIGINT handler when the callback is entered: the KeyboardInterrupt was raised inside a ctypes
    callback, which prints it and drops it, so a Ctrl-C during a load was lost and the run went on to the end.
    The block gets a function that says whether one is held, so a load can end early (`model_load_stops_when`).
    Signal handlers belong to the main thread; elsewhere (the app's workers) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    caught: list[signal.Signals] = []

    def hold(number: int, frame: object) -> None:
        if not caught and on_held_interrupt is not None:
            on_held_interrupt()
        caught.append(signal.Signals(number))

    previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(caught)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:  # the user asked to stop: the handler that was in place says how (it replaces the call's end)
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            raise KeyboardInterrupt


_loading = threading.Lock()  # the hook below swaps a module attribute: one load at a time


@contextmanager
def model_load_stops_when(stop: Callable[[], bool]) -> Iterator[None]:
    """A model load in the block ends early once `stop()` is true (a 32B model loads for a minute).

    llama.cpp's loader calls a progress callback as it goes and gives up when it returns false; llama-cpp-python's
    `Llama` takes no such callback, but builds its model parameters from `llama_model_default_params`, so for the
    length of the block that function answers with the callback set. A stopped load raises the binding's
    ValueError ("Failed to load model from file"): the caller, which knows why, says what happened."""
    import llama_cpp.llama_cpp as binding

    @binding.llama_progress_callback
    def progress(fraction: float, user_data: ctypes.c_void_p) -> bool:
        return not stop()

    with _loading:
        original = binding.llama_model_default_params

        def with_progress() -> object:
            params = original()
            params.progress_callback = progress
            return params

        binding.llama_model_default_params = with_progress
        try:
            yield
        finally:
            binding.llama_model_default_params = original
