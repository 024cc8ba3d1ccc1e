"""The reproduction map: where on (photon level, D) the study's two rows can both hold.

The study states its frame geometry and timing but not its photon level N, background B
or diffusion coefficients. The ``paper`` preset fits N, B, D1 and D2 to the study's
TrackPy row; this module asks the wider question on a grid instead. At every grid cell
(N, B(N), D), at the preset's geometry, timing, PSF and one QD per 24 x 25 frame, it
measures the AUC at each epsilon (``qdjax.evaluation.metrics``, the one metric) of:

- ``trackpy``: ``trackpy.locate`` with its diameter tuned per cell on that cell's own
  validation frames (never on its test frames): a well-tuned trackpy;
- ``mle``: the Poisson maximum-likelihood Gaussian fit;
- ``model``: a trained detector (the shipped one, or any training workdir);
- ``blur_floor``: a detector trained and tested on the noise-free expected images, so
  only the motion blur of the raster scan separates a frame from its trajectory centroid.
  The detector normalises each frame by its median and mean absolute deviation, which
  removes N and B from a noise-free image exactly, so the floor depends on D alone and is
  measured once per D.

**B(N), the in vivo rule.** In vivo 2PM frames of one QD (docs/spec.md, section 9) have a spot
amplitude of 11 to 16 photons per pixel over a background of 0.6 to 1.2: B/N = 0.9/13.5 =
1/15 at the midpoints. The map keeps that ratio, B = N / 15, at every N, and adds the
``paper`` preset's own (N, B) (its fit to the TrackPy row, B = N) as one more level.

**Frames.** Every cell draws its test frames from one seed and its validation frames
from another, the same seeds at every cell (common random numbers: the start positions,
path increments and detector uniforms are shared, only scaled by D, N and B), so
neighbouring cells differ by their parameters rather than by sampling noise.

**Saving and merging.** Each method's cells are written to ``<output_dir>/<method>.json``
with the grid they were measured on. ``run`` measures the methods it is asked for and
``load_results`` gathers whatever is saved, so one method (e.g. the model, with a new
workdir) can be rerun alone and the map redrawn from all of them.

Reading the map against the study's rows: ``qdjax.study.reproduction_rows``; the figures and
summary.md drawn from the results: ``qdjax.study.reproduction_report``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from qdjax import io
from qdjax.evaluation import metrics
from qdjax.localize import locator as locator_lib
from qdjax.sim import data, presets

METHODS = ("trackpy", "mle", "model", "blur_floor")
# Methods whose AUC does not depend on the photon level (measured at one level per D).
LEVEL_FREE = ("blur_floor",)

# In vivo (docs/spec.md, section 9): spot amplitude 11-16 photons, background 0.6-1.2 photons.
IN_VIVO_PEAK_PHOTONS = (11.0, 16.0)
IN_VIVO_BACKGROUND_PHOTONS = (0.6, 1.2)
IN_VIVO_BACKGROUND_PER_PEAK = float(np.mean(IN_VIVO_BACKGROUND_PHOTONS)) / float(
  np.mean(IN_VIVO_PEAK_PHOTONS)
)

# Role seeds (user seed * 100 + this): disjoint from qdjax.sim.data's splits (0-7).
_TEST_SEED, _VALIDATION_SEED = 90, 91


def in_vivo_background(peak_photons: float) -> float:
  """B(N) at the in vivo background-to-amplitude ratio (0.9 / 13.5 = 1/15), photons/pixel."""
  if not (math.isfinite(peak_photons) and peak_photons > 0):
    raise ValueError(f"peak_photons must be a positive number, got {peak_photons}")
  return float(peak_photons) * IN_VIVO_BACKGROUND_PER_PEAK


@dataclasses.dataclass(frozen=True)
class Grid:
  """The map's axes.

  Attributes:
    preset: name of the preset whose geometry, timing and PSF every cell uses.
    levels: ((N, B), ...) photon levels: peak photons per dwell, background per pixel.
    diffusion: D values, um^2/s, ascending.
    epsilons: match radii, px.
    test_frames: test frames per cell.
    validation_frames: validation frames per cell (trackpy's tuning).
    seed: user seed.
  """

  preset: str
  levels: tuple[tuple[float, float], ...]
  diffusion: tuple[float, ...]
  epsilons: tuple[float, ...]
  test_frames: int
  validation_frames: int
  seed: int

  def __post_init__(self):
    if not self.levels or not self.diffusion:
      raise ValueError("the grid needs at least one photon level and one D")
    for n, b in self.levels:
      if not (math.isfinite(n) and n > 0 and math.isfinite(b) and b >= 0):
        raise ValueError(f"bad photon level N={n}, B={b}: need N > 0, B >= 0")
    for d in self.diffusion:
      if not (math.isfinite(d) and d > 0):
        raise ValueError(f"diffusion values must be > 0, got {d}")
    if list(self.diffusion) != sorted(self.diffusion):
      raise ValueError(f"diffusion values must be ascending, got {list(self.diffusion)}")
    if self.test_frames < 1 or self.validation_frames < 1:
      raise ValueError(
        f"test_frames and validation_frames must be >= 1, got {self.test_frames}, "
        f"{self.validation_frames}"
      )
    if self.seed < 0:
      raise ValueError(f"seed must be >= 0, got {self.seed}")

  def to_dict(self) -> dict:
    return {
      "preset": self.preset,
      "levels": [list(level) for level in self.levels],
      "diffusion": list(self.diffusion),
      "epsilons": list(self.epsilons),
      "test_frames": self.test_frames,
      "validation_frames": self.validation_frames,
      "seed": self.seed,
    }

  @classmethod
  def from_dict(cls, record: dict) -> Grid:
    return cls(
      preset=record["preset"],
      levels=tuple((float(n), float(b)) for n, b in record["levels"]),
      diffusion=tuple(float(d) for d in record["diffusion"]),
      epsilons=tuple(float(e) for e in record["epsilons"]),
      test_frames=int(record["test_frames"]),
      validation_frames=int(record["validation_frames"]),
      seed=int(record["seed"]),
    )

  def params(self, level: int, d: int):
    """simulate.Params of cell (level, d)."""
    n, b = self.levels[level]
    return presets.get(self.preset).sim_params(
      diffusion=self.diffusion[d], peak_photons=n, background_photons=b
    )

  def frames(self, level: int, d: int, role: str) -> dict[str, np.ndarray]:
    """The cell's 'test' or 'validation' frames (``data.generate``'s arrays)."""
    offset = {"test": _TEST_SEED, "validation": _VALIDATION_SEED}[role]
    size = self.test_frames if role == "test" else self.validation_frames
    # One frame count for both roles: the simulator compiles once per count, which costs
    # far more than drawing the extra frames.
    count = max(self.test_frames, self.validation_frames)
    frames = data.generate(self.params(level, d), count, self.seed * 100 + offset)
    return {k: v[:size] for k, v in frames.items()}


def make_grid(config) -> Grid:
  """The Grid of a reproduction config: N values with B = N/15, plus the preset's own level."""
  preset = presets.get(config.preset)
  peaks = [float(n) for n in config.peak_photons]
  levels = [(n, round(in_vivo_background(n), 4)) for n in peaks]
  if config.preset_level:
    level = (float(preset.values["peak_photons"]), float(preset.values["background_photons"]))
    if level not in levels:
      levels.append(level)
  return Grid(
    preset=preset.name,
    levels=tuple(levels),
    diffusion=tuple(float(d) for d in config.diffusion),
    epsilons=tuple(float(e) for e in preset.epsilons_px),
    test_frames=int(config.test_frames),
    validation_frames=int(config.validation_frames),
    seed=int(config.seed),
  )


def parse_methods(text) -> list[str]:
  """'trackpy,model' -> ['trackpy', 'model'], checking every name ('' -> [])."""
  return locator_lib.parse_methods(text, METHODS)


def _cell_record(detections, frames, epsilons, level, d, grid, extra=None) -> dict:
  reports = [
    metrics.report(detections, frames["keypoints"], frames["present"], e) for e in epsilons
  ]
  rmse = reports[-1].localisation.rmse_px
  n, b = grid.levels[level]
  return {
    "level": level,
    "d": d,
    "peak_photons": n,
    "background_photons": b,
    "diffusion_um2_s": grid.diffusion[d],
    "auc": [round(r.auc, 4) for r in reports],
    "ground_truths": reports[0].num_ground_truth,
    "rmse_px": round(float(rmse), 4) if np.isfinite(rmse) else None,
    **(extra or {}),
  }


def _trackpy_cell(grid, level, d, test, diameters, workers):
  from qdjax.localize import trackpy as trackpy_baseline

  validation = grid.frames(level, d, "validation")
  tuning = trackpy_baseline.tune(
    [validation],
    grid.epsilons,
    trackpy_baseline.Grid(diameters=tuple(diameters), percentiles=(64.0,), minmasses=(0.0,)),
    workers=workers,
  )
  locator = trackpy_baseline.Locator(tuning.settings, workers=workers)
  return locator(test["images"]), {"trackpy_settings": tuning.settings.to_dict()}


def measure(
  grid: Grid,
  method: str,
  locator: locator_lib.Locator | None = None,
  *,
  trackpy_diameters: Sequence[int] = (5, 7, 9, 11),
  trackpy_workers: int | None = 1,
  progress: bool = True,
) -> dict:
  """One method over the grid: a JSON-ready record with one entry per cell.

  Args:
    grid: the map's axes.
    method: one of ``METHODS``.
    locator: ``images [n, h, w] -> list of [k, 3] (x, y, score)``: the detector for
      'model' and 'blur_floor' (ignored by trackpy, which is tuned per cell, and optional
      for 'mle').
    trackpy_diameters: the diameters tuned over at each cell.
    trackpy_workers: trackpy processes (1: in this process; the sets are small).
    progress: show a progress bar.

  Returns:
    {"method", "grid", "cells": [...], "seconds"}; a cell holds its level and D indices and
    values, the AUC per epsilon, the ground-truth count and the RMSE at the largest epsilon
    (and trackpy's tuned settings).
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
  if method in ("model", "blur_floor") and locator is None:
    raise ValueError(f"method {method} needs a locator (a trained detector)")
  if method == "mle" and locator is None:
    locator = locator_lib.make("mle")
  levels = [0] if method in LEVEL_FREE else range(len(grid.levels))
  cells = [(i, j) for i in levels for j in range(len(grid.diffusion))]
  start = time.perf_counter()
  records = []
  for i, j in tqdm(cells, desc=f"map: {method}", unit="cell", disable=not progress):
    test = grid.frames(i, j, "test")
    extra = None
    if method == "trackpy":
      detections, extra = _trackpy_cell(grid, i, j, test, trackpy_diameters, trackpy_workers)
    elif method == "blur_floor":
      detections = locator(test["expected"])
      # Beside the trained detector: how often the plain noise-free centroid is close.
      background = grid.levels[i][1]
      within = [round(centroid_within(test, background, e), 4) for e in grid.epsilons]
      extra = {"centroid_within": within}
    else:
      detections = locator(test["images"])
    records.append(_cell_record(detections, test, grid.epsilons, i, j, grid, extra))
  return {
    "method": method,
    "grid": grid.to_dict(),
    "level_free": method in LEVEL_FREE,
    "cells": records,
    "seconds": round(time.perf_counter() - start, 1),
  }


def save(record: dict, output_dir, source: str | None = None) -> Path:
  """Writes ``<output_dir>/<method>.json`` atomically (``source``: where a model came from)."""
  if source is not None:
    record = {**record, "source": source}
  path = Path(output_dir) / f"{record['method']}.json"
  io.write_text(path, json.dumps(record, indent=1) + "\n")
  return path


@dataclasses.dataclass(frozen=True)
class Results:
  """The saved methods of one grid as arrays.

  Attributes:
    grid: the axes.
    auc: method -> [levels, D, epsilons] AUC (a level-free method is broadcast over levels).
    ground_truths: method -> [levels, D] number of QDs in the test frames.
    records: method -> its saved record.
    notices: one-line notes (files skipped because their grid differs).
  """

  grid: Grid
  auc: dict[str, np.ndarray]
  ground_truths: dict[str, np.ndarray]
  records: dict[str, dict]
  notices: tuple[str, ...] = ()

  @property
  def methods(self) -> list[str]:
    return [m for m in METHODS if m in self.auc]


def to_arrays(record: dict, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
  """[levels, D, eps] AUC and [levels, D] ground truths of one method's record."""
  shape = (len(grid.levels), len(grid.diffusion))
  auc = np.full(shape + (len(grid.epsilons),), np.nan)
  truths = np.zeros(shape)
  for cell in record["cells"]:
    rows = slice(None) if record.get("level_free") else cell["level"]
    auc[rows, cell["d"]] = cell["auc"]
    truths[rows, cell["d"]] = cell["ground_truths"]
  return auc, truths


def load_results(output_dir, grid: Grid) -> Results:
  """Every ``<output_dir>/<method>.json`` measured on ``grid`` (others are skipped, noted)."""
  auc, truths, records, notices = {}, {}, {}, []
  for method in METHODS:
    path = Path(output_dir) / f"{method}.json"
    if not path.is_file():
      continue
    try:
      record = json.loads(path.read_text())
      saved = Grid.from_dict(record["grid"])
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"unreadable map results {path}: {e}") from None
    if saved != grid:
      notices.append(f"skipped {path}: measured on another grid (rerun --methods={method})")
      continue
    auc[method], truths[method] = to_arrays(record, grid)
    records[method] = record
  return Results(grid, auc, truths, records, tuple(notices))


def centroid_within(frames: dict, background: float, epsilon: float = 1.0) -> float:
  """Fraction of present QDs whose noise-free image's centroid lies within ``epsilon`` px
  of the trajectory centroid (one QD per frame).

  The centroid is the intensity-weighted mean pixel of ``expected - background``: the
  spot's photons only, as a perfectly background-subtracted, noise-free centroid.

  Args:
    frames: ``data.generate`` arrays (expected [n, h, w], keypoints [n, 1, 2], present).
    background: B, photons per pixel.
  """
  spot = np.clip(frames["expected"].astype(np.float64) - background, 0.0, None)
  h, w = spot.shape[1:]
  mass = spot.sum(axis=(1, 2))
  x = (spot * np.arange(w)[None, None, :]).sum(axis=(1, 2)) / mass
  y = (spot * np.arange(h)[None, :, None]).sum(axis=(1, 2)) / mass
  present = frames["present"][:, 0]
  truth = frames["keypoints"][:, 0]
  dist = np.hypot(x - truth[:, 0], y - truth[:, 1])[present]
  return float(np.mean(dist <= epsilon))


def make_locator(method: str, config) -> tuple[locator_lib.Locator | None, str | None]:
  """The detector a method needs, and where it came from (None, None for trackpy/mle).

  'model' is ``qdjax.localize.locator.make('model', workdir=config.workdir, model=config.model)``: a
  training workdir, or a model shipped with the package (``config.model``, by default
  ``inference.default_model()``). 'blur_floor' needs ``config.blur_floor_workdir`` (a
  detector trained with ``config.data='noise_free'``).
  """
  from qdjax.detect import inference

  if method == "model":
    workdir, name = config.workdir or None, config.model or None
    if workdir and not Path(workdir).is_dir():
      raise FileNotFoundError(f"workdir does not exist: {workdir}")
    locator = locator_lib.make("model", workdir=workdir, model=name)
    source = workdir or f"shipped model '{name or inference.default_model()}'"
    return locator, source
  if method == "blur_floor":
    workdir = config.blur_floor_workdir
    if not workdir:
      raise ValueError(
        "method blur_floor needs --blur_floor_workdir (train it with "
        "experiments/configs/blur_floor.py)"
      )
    if not Path(workdir).is_dir():
      raise FileNotFoundError(f"blur_floor_workdir does not exist: {workdir}")
    return locator_lib.make("model", workdir=workdir), workdir
  return None, None


def run(config, progress: bool = True) -> Results:
  """Measures ``config.methods`` over the grid, saves each, and returns every saved method.

  Methods already saved in ``config.output_dir`` for the same grid and not asked for are
  kept, so ``--methods=model`` reruns the model alone and the map is drawn with the rest.

  Args:
    config: see experiments/configs/reproduction.py.
    progress: show progress bars.
  """
  grid = make_grid(config)
  methods = parse_methods(config.methods)
  output_dir = Path(config.output_dir)
  # Build every locator first: a bad workdir fails before any long computation.
  locators = {m: make_locator(m, config) for m in methods}
  for method in methods:
    locator, source = locators[method]
    record = measure(
      grid,
      method,
      locator,
      trackpy_diameters=tuple(config.trackpy_diameters),
      trackpy_workers=config.trackpy_workers,
      progress=progress,
    )
    save(record, output_dir, source)
  return load_results(output_dir, grid)
