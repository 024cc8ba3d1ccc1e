"""trackpy as the study used it: ``trackpy.locate`` per frame, ``mass`` as the score.

Settings (``diameter``, ``minmass``, ``percentile``) are chosen by ``tune`` on validation
frames, never on a test set.

``minmass`` needs no separate runs: trackpy applies it last, as ``mass > minmass`` on the
finished features, so ``tune`` runs ``locate`` once per (diameter, percentile) with no
mass cut and applies each minmass afterwards; this gives exactly the features a run with
that minmass would. Because mass is also the score, a minmass cut only removes the tail of
the ranking, and with the all-point-interpolated AUC that can never raise the area; the
search still covers it so that a table states what was tried.

A frame where trackpy finds nothing gives no detections. A frame where trackpy (or NumPy
inside it) warns gives no detections either: its result is not trusted, and the ground
truth of that frame counts as missed. Pandas deprecation notices, which trackpy 0.7
triggers on every frame, are not warnings about the frame and are ignored.

Frames are processed in a pool of worker processes (``WorkerPool``) when there are enough
of them to pay for the pool (a frame takes about 2 ms); the pool belongs to the locator
that made it and is stopped with it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Sequence

import numpy as np

# Warnings that describe trackpy's or pandas' API, not the frame being located.
_API_NOISE = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@dataclasses.dataclass(frozen=True)
class Settings:
  """trackpy.locate settings.

  Attributes:
    diameter: odd feature diameter in px.
    minmass: features with mass <= minmass are dropped.
    percentile: peaks must be brighter than this percentile of the smoothed image.
  """

  diameter: int = 5
  minmass: float = 0.0
  percentile: float = 64.0

  def __post_init__(self):
    if self.diameter < 3 or self.diameter % 2 != 1:
      raise ValueError(f"trackpy diameter must be an odd integer >= 3, got {self.diameter}")
    if not 0 <= self.percentile < 100:
      raise ValueError(f"trackpy percentile must be in [0, 100), got {self.percentile}")
    if not np.isfinite(self.minmass):
      raise ValueError(f"trackpy minmass must be finite, got {self.minmass}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _quiet_trackpy():
  import trackpy

  trackpy.quiet()
  logging.getLogger("trackpy").setLevel(logging.ERROR)
  return trackpy


def locate_frame(image: np.ndarray, diameter: int, percentile: float, minmass: float):
  """One frame: [k, 3] (x, y, mass), or [0, 3] if trackpy finds nothing or warns.

  Args:
    image: [h, w] float.
  """
  trackpy = _quiet_trackpy()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    features = trackpy.locate(
      np.asarray(image, np.float64),
      diameter,
      minmass=minmass,
      percentile=percentile,
      characterize=False,
      engine="python",
    )
  if any(not issubclass(w.category, _API_NOISE) for w in caught) or len(features) == 0:
    return np.zeros((0, 3))
  # Column by column: selecting a column list in pandas costs as much as the locate.
  return np.stack([features[c].to_numpy(np.float64) for c in ("x", "y", "mass")], axis=1)


def _locate_chunk(images: np.ndarray, diameter: int, percentile: float, minmass: float):
  return [locate_frame(image, diameter, percentile, minmass) for image in images]


# Below this many frames per worker the pool's start-up and pickling cost more than the
# parallel speed-up (measured: 2 ms per frame, about 1 s to start the pool).
MIN_FRAMES_PER_WORKER = 500
# How often a worker checks that its parent is still alive (where the kernel cannot tell it).
_PARENT_POLL_S = 0.5


def default_workers() -> int:
  return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


class WorkerPool:
  """trackpy's worker processes, owned by one ``Locator`` (or one ``locate_frames`` or
  ``tune`` call) and stopped with it: ``close()``, the end of a ``with`` block, an error
  or interrupt during a call, garbage collection or the interpreter's exit.

  The processes start on first use (spawning them costs about a second: each imports
  trackpy and pandas), with ``spawn``, never ``fork``, since the parent runs JAX threads.
  They ignore Ctrl-C, which is the parent's to handle (it then terminates them), and die
  with their parent even when it is killed outright: on Linux the kernel sends them
  SIGKILL (``PR_SET_PDEATHSIG``), and everywhere each polls its parent's pid.
  """

  def __init__(self, workers: int | None = None):
    self.workers = default_workers() if workers is None else workers
    self._pool = None
    self._finalizer = None

  def workers_for(self, num_frames: int) -> int:
    """How many workers ``num_frames`` frames are worth (1: run in this process)."""
    return max(1, min(self.workers, num_frames // MIN_FRAMES_PER_WORKER))

  @property
  def running(self) -> bool:
    return self._pool is not None

  def map(self, function, items):
    """``function`` over ``items`` in the workers, results in order (an iterator)."""
    if self._pool is None:
      context = multiprocessing.get_context("spawn")
      # The kernel's parent-death signal follows the thread that made the child, so it is
      # asked for only when that thread is the main one (which lives as long as the process).
      main_thread = threading.current_thread() is threading.main_thread()
      self._pool = context.Pool(
        self.workers, initializer=_init_worker, initargs=(os.getpid(), main_thread)
      )
      self._finalizer = weakref.finalize(self, _terminate, self._pool)
    return self._pool.imap(function, items)

  def close(self) -> None:
    """Terminates the workers now (a later ``map`` starts new ones)."""
    if self._finalizer is None:
      return
    self._finalizer()
    self._pool = self._finalizer = None
    gc.collect()  # the pool's threads and queues hold one another: free them (see above)

  def __enter__(self) -> WorkerPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _terminate(pool) -> None:
  pool.terminate()
  pool.join()


def _init_worker(parent_pid: int, parent_death_signal: bool) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if parent_death_signal and sys.platform.startswith("linux"):
    try:
      libc = ctypes.CDLL(None, use_errno=True)
      libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      pass
  threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
  # A worker whose parent has died is adopted by another process: its parent pid changes.
  while os.getppid() == parent_pid:
    time.sleep(_PARENT_POLL_S)
  os._exit(1)


def _locate_chunk(args):
  images, diameter, percentile, minmass = args
  return [locate_frame(image, diameter, percentile, minmass) for image in images]


def locate_frames(
  images,
  diameter: int,
  percentile: float,
  minmass: float,
  workers: int | None = None,
  progress=None,
  pool: WorkerPool | None = None,
) -> list[np.ndarray]:
  """trackpy on every frame.

  Args:
    images: [n, h, w] float.
    workers: worker processes; None picks by core count, 1 runs in this process. Workers
      are used only with at least ``MIN_FRAMES_PER_WORKER`` frames each.
    progress: optional tqdm-like bar, advanced by frames.
    pool: the caller's ``WorkerPool`` (then ``workers`` is its size); without one, a pool
      is made for this call when it is worth it and closed before returning.

  Returns:
    list of n arrays [k, 3] (x, y, mass), docs/spec.md px coordinates (trackpy's own).
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 3:
    raise ValueError(f"images must be [n, h, w], got shape {images.shape}")
  if pool is None:
    with WorkerPool(workers) as own:
      return _locate_frames(images, (diameter, percentile, minmass), progress, own)
  return _locate_frames(images, (diameter, percentile, minmass), progress, pool)


def _locate_frames(images, settings, progress, pool: WorkerPool) -> list[np.ndarray]:
  workers = pool.workers_for(len(images))
  if workers <= 1:
    out = []
    for image in images:
      out.append(locate_frame(image, *settings))
      if progress is not None:
        progress.update(1)
    return out
  chunk = max(64, -(-len(images) // (8 * workers)))
  pieces = ((images[i : i + chunk], *settings) for i in range(0, len(images), chunk))
  out = []
  results = pool.map(_locate_chunk, pieces)
  try:
    for part in results:
      out.extend(part)
      if progress is not None:
        progress.update(len(part))
  except BaseException as error:
    # Interrupted or failed: the workers' queue is in an unknown state. The results
    # iterator, also held by the finished frames of the error's traceback, holds the pool;
    # with both dropped the pool's semaphores are freed now, not reported as leaked by
    # multiprocessing's tracker when the command then exits at once.
    del results
    traceback.clear_frames(error.__traceback__)
    pool.close()
    raise
  return out


class Locator:
  """trackpy with fixed settings: ``Locator(settings)(images) -> list of [k, 3]``; a
  ``qdjax.localize.locator.Locator``.

  Its worker pool (``WorkerPool``) starts on the first long enough call and stays for the
  next; ``close()`` (or a ``with`` block) stops it, as do an interrupt and garbage
  collection.
  """

  method = "trackpy"  # its name in ``qdjax.localize.locator`` (default score cut there)

  def __init__(self, settings: Settings | None = None, workers: int | None = None):
    self.settings = settings or Settings()
    self.workers = workers
    self.pool = WorkerPool(workers)

  def __call__(self, images, progress=None) -> list[np.ndarray]:
    """images: [n, h, w] -> n arrays [k, 3] of (x, y, mass)."""
    s = self.settings
    return locate_frames(
      images, s.diameter, s.percentile, s.minmass, progress=progress, pool=self.pool
    )

  def close(self) -> None:
    self.pool.close()

  def __enter__(self) -> Locator:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


@dataclasses.dataclass(frozen=True)
class Grid:
  """The settings ``tune`` tries (all combinations).

  Ties go to the earliest combination, so trackpy's defaults (percentile 64, minmass 0)
  come first: a setting that changes nothing is not reported as a choice.
  """

  diameters: tuple[int, ...] = (3, 5, 7, 9, 11)
  percentiles: tuple[float, ...] = (64.0, 0.0, 50.0, 90.0)
  minmasses: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0)


@dataclasses.dataclass(frozen=True)
class Tuning:
  """The result of ``tune``.

  Attributes:
    settings: the best Settings.
    objective: its mean AUC over the validation sets and epsilons.
    table: ((Settings, mean AUC), ...) for every combination tried, best first.
  """

  settings: Settings
  objective: float
  table: tuple


def filter_minmass(detections: Sequence[np.ndarray], minmass: float) -> list[np.ndarray]:
  """What trackpy's ``minmass`` keeps: features with mass > minmass."""
  return [d[d[:, 2] > minmass] for d in detections]


def tune(
  datasets: Sequence[dict],
  epsilons: Sequence[float],
  grid: Grid = Grid(),
  workers: int | None = None,
  progress=None,
) -> Tuning:
  """Picks the settings with the highest mean AUC over ``datasets`` x ``epsilons``.

  Args:
    datasets: validation sets, dicts with images [n, h, w], keypoints [n, P, 2] and
      present [n, P] (e.g. ``data.load_split(preset, 'val_d1')``). Never test splits.
    epsilons: match radii in px.
    grid: the combinations to try.
    workers: as in ``locate_frames``.
    progress: optional tqdm-like bar, advanced by frames located.
  """
  from qdjax.evaluation import metrics

  results = []
  with WorkerPool(workers) as pool:  # one pool for the whole search
    located_by_setting = {
      (diameter, percentile): [
        locate_frames(d["images"], diameter, percentile, -np.inf, progress=progress, pool=pool)
        for d in datasets
      ]
      for diameter, percentile in itertools.product(grid.diameters, grid.percentiles)
    }
  for (diameter, percentile), located in located_by_setting.items():
    for minmass in grid.minmasses:
      aucs = [
        metrics.auc(filter_minmass(dets, minmass), d["keypoints"], d["present"], eps)
        for dets, d in zip(located, datasets, strict=True)
        for eps in epsilons
      ]
      results.append((Settings(diameter, float(minmass), float(percentile)), float(np.mean(aucs))))
  # Best first; among equals the earliest in grid order (a stable sort).
  results.sort(key=lambda r: -r[1])
  return Tuning(settings=results[0][0], objective=results[0][1], table=tuple(results))
