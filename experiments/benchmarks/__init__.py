"""Speed and accuracy measurements behind ``experiments/bench.py``.

Each submodule has ``run(**flags) -> dict`` returning JSON-ready figures; medians of
repeated timings, and ratios measured side by side in one run.
"""

import statistics
import subprocess
import time


def median_seconds(fn, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of ``fn()`` (which must block until its work is done)."""
  return interleaved_medians({"fn": fn}, repeats, warmup)["fn"]


def process_seconds(command: list[str], env: dict) -> float:
  """Wall time of one whole process (interpreter start, imports and compilation included)."""
  start = time.perf_counter()
  subprocess.run(command, env=env, check=True, capture_output=True)
  return time.perf_counter() - start


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
