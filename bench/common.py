"""Shared helpers: benchmarks print ratios against a baseline measured in the same run."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable


def usage(doc: str | None) -> None:
    """`-h` / `--help`: print the benchmark's docstring (its options and goals) and exit, measuring nothing."""
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print((doc or "").strip())
        raise SystemExit(0)


def text_option(name: str, default: str | None) -> str | None:
    """`--name VALUE` from the command line, else `default`; a name given last, with no value, is a usage error."""
    if name not in sys.argv:
        return default
    at = sys.argv.index(name) + 1
    if at >= len(sys.argv) or sys.argv[at].startswith("--"):
        raise SystemExit(f"{name} needs a value (--help lists the options)")
    return sys.argv[at]


def int_option(name: str, default: int | None) -> int | None:
    """`--name N` from the command line, else `default`."""
    value = text_option(name, None)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} {value}: a whole number") from None


def best_of(repeats: int, fn: Callable[[], float | None]) -> float:
    """Run `fn` several times; it returns its own measure (seconds or a rate) or None to be timed."""
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        measured = fn()
        results.append(measured if measured is not None else time.perf_counter() - start)
    return statistics.median(results)


def report(name: str, ours: float, baseline: float, unit: str, goal: str, higher_is_better: bool) -> None:
    ratio = ours / baseline if baseline else float("nan")
    print(f"{name}: gristmill {ours:.3f} {unit}, baseline {baseline:.3f} {unit}, ratio {ratio:.3f} (goal {goal})")
