"""Speed and accuracy measurements behind ``experiments/bench.py``.

Each submodule has ``run(**flags) -> dict`` returning JSON-ready figures; medians of
repeated timings, and ratios measured side by side in one run.
"""

import statistics
import time


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of ``fn()`` (which must block until its work is done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_medians(fns: dict, repeats: int = 5, warmup: int = 1) -> dict:
  """Median wall time of each ``fns[name]()``, the functions run in turn within each repeat,
  so a load that comes and goes on a shared machine falls on all of them alike."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
