"""Throughput of ``batch.track_many`` on Dask workers: 1 worker against 2.

``python experiments/bench.py --what=batch``: 8 small movies (64 x 64, 200 frames, 6 QDs
diffusing on Poisson noise, written with NumPy), tracked with trackpy by a local cluster of
1 and of 2 single-threaded worker processes (``batch.local_cluster``), each cluster
started once and warmed up (imports, the locator) on other movies first; times are
medians of repeats of the whole run (every movie tracked again: ``overwrite=True``). The
target: 2 workers at least 1.6x the movies/s of 1. Also timed: 2 workers without the
single-thread environment (``batch.WORKER_ENV``), each cluster's start, and, as a control,
the same number of pure-Python tasks on each cluster (``reference_speedup_2_vs_1``: the
parallelism a loaded machine had to give; on a shared 2-core machine it can be far below
2).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import median_seconds
from qdjax.tracks import batch

TARGET_SPEEDUP = 1.6  # 2 workers against 1


def write_movies(folder: Path, count: int, frames: int, size: int, qds: int, seed: int = 0):
  """``count`` movies [frames, size, size] of ``qds`` Gaussian spots diffusing on Poisson
  noise, as .npy files in ``folder``."""
  folder.mkdir(parents=True, exist_ok=True)
  rows, cols = np.mgrid[:size, :size]
  paths = []
  for i in range(count):
    rng = np.random.default_rng(seed + i)
    start = rng.uniform(6, size - 6, (qds, 2))
    walk = start + np.cumsum(rng.normal(0, 0.4, (frames, qds, 2)), axis=0)
    walk = np.clip(walk, 3, size - 4)
    image = np.zeros((frames, size, size), np.float32)
    for q in range(qds):
      dx = cols - walk[:, q, 0, None, None]
      dy = rows - walk[:, q, 1, None, None]
      image += np.exp(-(dx**2 + dy**2) / 8)
    path = folder / f"movie{i:02d}.npy"
    np.save(path, rng.poisson(1.0 + 30 * image).astype(np.float32))
    paths.append(path)
  return paths


def busy(units: int) -> int:
  """Pure-Python work of one core, ``units`` x about 10 ms: a reference task."""
  total = 0
  for i in range(units * 200_000):
    total ^= i
  return total


def _reference_seconds(cluster, count: int, repeats: int, units: int) -> float:
  """Wall time of ``count`` tasks of pure-Python work (``busy(units)`` each) on the cluster's
  workers: what the machine's free cores allow, with no I/O and nothing to load (the
  control)."""
  from dask.distributed import Client

  with Client(cluster.scheduler_address) as client:

    def run_all():
      client.gather(client.map(busy, [units] * count, pure=False))

    return median_seconds(run_all, repeats=repeats, warmup=1)


def _time_cluster(workers, single_threaded, movies, warm, work, repeats, method, units) -> dict:
  start = time.perf_counter()
  with batch.local_cluster(workers, single_threaded=single_threaded) as cluster:
    started = time.perf_counter() - start
    reference = _reference_seconds(cluster, len(movies), repeats, units)
    options = dict(method=method, preset="paper", scheduler=cluster.scheduler_address)
    options.update(overwrite=True, progress=False)
    # Each worker imports qdjax and builds its locator on its first movie: not timed.
    batch.track_many(warm, work / "warm", **options)
    summary = None

    def run_all():
      nonlocal summary
      summary = batch.track_many(movies, work / "out", **options)

    seconds = median_seconds(run_all, repeats=repeats, warmup=0)
  failed = summary[summary["status"] != "done"]
  if len(failed):
    raise RuntimeError(f"bench movies failed: {failed[['name', 'error']].to_dict('records')}")
  return {
    "workers": workers,
    "single_threaded_env": single_threaded,
    "movies": len(movies),
    "seconds": seconds,
    "movies_per_s": len(movies) / seconds,
    "cluster_start_s": started,
    "reference_tasks_s": reference,
    "tracks": int(summary["tracks"].sum()),
  }


def run(repeats: int = 5, quick: bool = False, method: str = "trackpy", frames=None) -> dict:
  """Args: as ``bench.py``'s flags; ``method``: the locator ('trackpy', or 'model' for the
  default shipped model); ``frames``: per movie (default 200, or 24 with ``quick``)."""
  count, default_frames, size = (4, 24, 32) if quick else (8, 200, 64)
  frames = frames or default_frames
  repeats = 1 if quick else repeats
  units = 3 if quick else 30  # the control's tasks: about 30 or 300 ms each
  with tempfile.TemporaryDirectory(prefix="qdjax-bench-batch.") as tmp:
    work = Path(tmp)
    movies = write_movies(work / "movies", count, frames, size, qds=6)
    warm = write_movies(work / "warm", 2 if quick else 4, frames, size, qds=6, seed=100)
    rows = {
      "1_worker": _time_cluster(1, True, movies, warm, work, repeats, method, units),
      "2_workers": _time_cluster(2, True, movies, warm, work, repeats, method, units),
    }
    if not quick:
      rows["2_workers_default_threads"] = _time_cluster(
        2, False, movies, warm, work, repeats, method, units
      )
  speedup = rows["2_workers"]["movies_per_s"] / rows["1_worker"]["movies_per_s"]
  # The same ratio for pure-Python tasks: the parallelism the machine had to give.
  reference = rows["1_worker"]["reference_tasks_s"] / rows["2_workers"]["reference_tasks_s"]
  return {
    "what": "batch",
    "method": method,
    "movies": {"count": count, "frames": frames, "height": size, "width": size, "qds": 6},
    "repeats": repeats,
    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    "rows": rows,
    "speedup_2_vs_1": speedup,
    "reference_speedup_2_vs_1": reference,
    "target_speedup": TARGET_SPEEDUP,
    "target_met": bool(speedup >= TARGET_SPEEDUP),
  }
