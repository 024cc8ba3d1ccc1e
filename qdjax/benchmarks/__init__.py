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
