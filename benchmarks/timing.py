"""Wall-clock timing shared by the benchmark scripts."""

import time
from typing import Any, Callable


def best_of_interleaved(repeats: int, *fns: Callable[[], Any]) -> list[tuple[float, Any]]:
    """Per fn: (its fastest call in seconds, its last result), over `repeats` rounds.

    The rounds interleave the fns (one call of each per round), so a change of load on a shared
    machine hits them alike; the fastest call is the least disturbed one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeats):
        for index, fn in enumerate(fns):
            start = time.perf_counter()
            results[index] = fn()
            times[index].append(time.perf_counter() - start)
    return [(min(seconds), result) for seconds, result in zip(times, results)]


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(the fastest of `repeats` calls of fn() in seconds, the last call's result)."""
    return best_of_interleaved(repeats, fn)[0]
