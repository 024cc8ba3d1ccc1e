"""Fits the ``paper`` preset so that qdjax's trackpy row matches the study's.

The calibration of docs/spec.md, section 2.

The fitted values are N (``peak_photons``), B (``background_photons``), D1 and D2, with
D3 = 10 D1. The objective is the largest absolute gap, over the nine cells (three regimes
x epsilon 1, 2, 3 px), between the AUC of trackpy on qdjax frames and the study's TrackPy
row; ties are broken by the mean absolute gap. Only validation-style frames are used: a
regime-k candidate is scored on the first frames of the ``val_dk`` split's seed, simulated
with the candidate's values, so every candidate sees the same random numbers (common
random numbers make the search deterministic and its comparisons sharper than the
sampling error of one set).

The search runs coarse to fine:

1. **Coarse.** A grid over (N, B) at a fraction of the validation size. For each pair,
   trackpy is run at D on a half-decade grid, separately per regime (regime 1 and 3 only
   where D1 in [d1_min, d1_max] and D3 = 10 D1 can reach them), and the AUC is
   interpolated linearly in log D, so every (D1, D2) on a fine grid with
   D1 <= D2 <= D3 is scored without new runs.
2. **Fine.** A (1+1) evolution strategy in log N, log B, log D1, log D2 at the full
   validation size, from the best of the top coarse candidates and the first probe of
   docs/spec.md, section 2 (N=3, B=4, D=0.3/1.5/3). Every trial moves all coordinates at
   once, which a worst-cell objective needs: its valleys run diagonally (raising D1 lowers
   the epsilon-1 cell that is too high and the epsilon-3 cell that is too low together),
   and a search along one axis at a time stalled in them.
3. **Freed.** Only if the fine fit misses the target: the same search with ``margin_px``,
   ``z_range_um`` and ``sigma_z_um`` freed as well (docs/spec.md, section 2, allows these, since the
   study never states them). A value counts as freed only if the best fit moved it.

trackpy's settings are tuned on the validation frames: at every coarse candidate and at
the fine starts over the diameters that matter (``diameters``); the fine and freed
searches keep the diameter chosen at their start, with percentile and minmass at
trackpy's defaults. That restriction is checked, not assumed: at the final point
``trackpy.tune`` searches the full grid of diameter x percentile x minmass, and the gap
written out is the one with those fully tuned settings. (minmass is a pure cut on the
score, which cannot raise an all-point AUC; percentile only gates which local maxima
are candidates, which on one-QD frames changed no AUC by more than 0.001 in our probes.)

Values are rounded to three significant digits before they are scored, so the numbers
written out are exactly the ones whose gap is reported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from qdjax import io
from qdjax.evaluation import metrics
from qdjax.localize import trackpy as trackpy_baseline
from qdjax.sim import data, presets
from qdjax.study.evaluate import STUDY

STUDY_TRACKPY = np.asarray(STUDY["TrackPy"], np.float64)  # [3 regimes, 3 epsilons]

# The values docs/spec.md, section 2, lets the fit free, at the first probe's values (sigma_z by the
# reconstruction rule). A calibration starts from these, never from an earlier fit.
FREEABLE_START = {"margin_px": 2.0, "z_range_um": 0.3, "sigma_z_um": 0.6}
D3_OVER_D1 = 10.0


def _round(value: float, digits: int = 3) -> float:
  if value == 0:
    return 0.0
  return float(f"{value:.{digits}g}")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A point of the search.

  Attributes:
    point: sorted ((name, value), ...): ``peak_photons``, ``background_photons``, ``d1``,
      ``d2`` and any freed value.
  """

  point: tuple[tuple[str, float], ...]

  @classmethod
  def of(cls, **point) -> Candidate:
    return cls(tuple(sorted((k, _round(float(v))) for k, v in point.items())))

  def get(self, name: str) -> float:
    return dict(self.point)[name]

  def replace(self, name: str, value: float) -> Candidate:
    return Candidate.of(**{**dict(self.point), name: value})

  @property
  def values(self) -> dict[str, float]:
    """The simulation values, named as in docs/spec.md (all but the diffusion coefficients)."""
    return {k: v for k, v in self.point if k not in ("d1", "d2")}

  @property
  def regimes(self) -> tuple[float, float, float]:
    d1 = self.get("d1")
    return (d1, self.get("d2"), _round(D3_OVER_D1 * d1))

  def valid(self, d1_range: tuple[float, float]) -> bool:
    p = dict(self.point)
    d1, d2, d3 = self.regimes
    ok = d1_range[0] <= d1 <= d1_range[1] and d1 <= d2 <= d3
    ok &= p["peak_photons"] > 0 and p["background_photons"] > 0
    ok &= 0 <= p.get("margin_px", 0) <= 8
    ok &= 0 <= p.get("z_range_um", 0) <= 2
    ok &= 0.1 <= p.get("sigma_z_um", 0.6) <= 5
    return bool(ok)

  def describe(self) -> str:
    d1, d2, d3 = self.regimes
    extra = "".join(f", {k}={v:g}" for k, v in self.values.items() if k in FREEABLE_START)
    return (
      f"N={self.get('peak_photons'):g}, B={self.get('background_photons'):g}, "
      f"D={d1:g}/{d2:g}/{d3:g}{extra}"
    )


@dataclasses.dataclass(frozen=True)
class Fit:
  """A candidate scored against the study.

  Attributes:
    candidate: the point.
    diameter: trackpy diameter that maximised the mean AUC there.
    row: [3, 3] trackpy AUC per regime and epsilon.
    gap: [3, 3] row minus the study's.
  """

  candidate: Candidate
  diameter: int
  row: np.ndarray
  gap: np.ndarray

  @property
  def max_abs_gap(self) -> float:
    return float(np.max(np.abs(self.gap)))

  @property
  def key(self) -> tuple[float, float]:
    """Lower is better: the worst cell, then the mean cell."""
    return (round(self.max_abs_gap, 6), round(float(np.mean(np.abs(self.gap))), 6))


def _best_diameter(rows: np.ndarray, diameters: Sequence[int]) -> int:
  """rows: [n_diameters, 3, 3] -> index of the diameter with the highest mean AUC."""
  del diameters
  return int(np.argmax(rows.reshape(len(rows), -1).mean(axis=1)))


class TrackpyScores:
  """trackpy AUCs on validation-style frames, cached by (values, D, regime, frames, diameter)."""

  def __init__(
    self,
    preset,
    seed: int,
    diameters: Sequence[int],
    percentile: float,
    minmass: float,
    epsilons: Sequence[float],
  ):
    self.preset = preset
    self.seed = seed
    self.diameters = tuple(int(d) for d in diameters)
    self.percentile = float(percentile)
    self.minmass = float(minmass)
    self.epsilons = tuple(float(e) for e in epsilons)
    self._cache: dict = {}
    self.frames_located = 0

  def frames(self, values: dict, diffusion: float, regime: int, size: int) -> dict:
    params = self.preset.sim_params(diffusion=diffusion, **{**FREEABLE_START, **values})
    seed = data.split_seed(self.seed, f"val_d{regime}")
    return data.generate(params, size, seed, chunk=size)

  def aucs(
    self, values: dict, diffusion: float, regime: int, size: int, diameters=None
  ) -> np.ndarray:
    """[n_diameters, n_epsilons] AUC of trackpy at each diameter (default: all)."""
    diameters = self.diameters if diameters is None else tuple(diameters)
    base = (tuple(sorted(values.items())), _round(diffusion, 6), regime, size)
    missing = [d for d in diameters if base + (d,) not in self._cache]
    if missing:
      frames = self.frames(values, diffusion, regime, size)
      for diameter in missing:
        detections = trackpy_baseline.locate_frames(
          frames["images"], diameter, self.percentile, self.minmass, workers=1
        )
        self.frames_located += size
        self._cache[base + (diameter,)] = np.array(
          [
            metrics.auc(detections, frames["keypoints"], frames["present"], e)
            for e in self.epsilons
          ]
        )
    return np.stack([self._cache[base + (d,)] for d in diameters])

  def fit(self, candidate: Candidate, size: int, diameters=None) -> Fit:
    """Scores a candidate, with trackpy's diameter tuned over ``diameters``."""
    diameters = self.diameters if diameters is None else tuple(diameters)
    values = candidate.values
    rows = np.stack(
      [self.aucs(values, d, k + 1, size, diameters) for k, d in enumerate(candidate.regimes)],
      axis=1,
    )  # [n_diameters, 3 regimes, 3 epsilons]
    best = _best_diameter(rows, diameters)
    return Fit(candidate, diameters[best], rows[best], rows[best] - STUDY_TRACKPY)


def _interp_log(query: np.ndarray, grid: np.ndarray, table: np.ndarray) -> np.ndarray:
  """Linear interpolation in log D. query [q], grid [g], table [g, ...] -> [q, ...]."""
  x, xp = np.log(query), np.log(grid)
  flat = table.reshape(len(grid), -1)
  out = np.stack([np.interp(x, xp, flat[:, j]) for j in range(flat.shape[1])], axis=-1)
  return out.reshape((len(query),) + table.shape[1:])


def coarse_search(scores: TrackpyScores, config, progress=True) -> list[tuple[tuple, Candidate]]:
  """Stage 1: (N, B) grid, D grids per regime, (D1, D2) by interpolation in log D.

  Returns:
    [(interpolated key, Candidate)] for every (N, B) pair, best first.
  """
  d1_lo, d1_hi = config.d1_range
  grid = 10.0 ** np.arange(math.log10(d1_lo), math.log10(d1_hi * D3_OVER_D1) + 0.5, 0.5)
  # Each regime's grid reaches just past the range its D can take, for interpolation.
  top1 = np.searchsorted(grid, d1_hi * (1 - 1e-9)) + 1
  bottom3 = np.searchsorted(grid, d1_lo * D3_OVER_D1 * (1 + 1e-9)) - 1
  grids = {1: grid[:top1], 2: grid, 3: grid[max(bottom3, 0) :]}
  size = max(1, round(data.split_size(scores.preset, "val_d1", 1.0) * config.coarse_scale))
  d1_fine = np.geomspace(d1_lo, d1_hi, config.coarse_d1_points)
  pairs = list(itertools.product(config.peak_photons_grid, config.background_photons_grid))
  results = []
  bar = tqdm(pairs, desc="calibrate: coarse (N, B)", disable=not progress)
  for n, b in bar:
    values = {"peak_photons": float(n), "background_photons": float(b)}
    tables = {
      k: np.stack([scores.aucs(values, float(d), k, size) for d in g]) for k, g in grids.items()
    }  # regime -> [n_grid, n_diameters, 3]
    best = None
    for d1 in d1_fine:
      d2s = np.geomspace(d1, D3_OVER_D1 * d1, config.coarse_d2_points)
      row1 = _interp_log(np.array([d1]), grids[1], tables[1])[0]
      row3 = _interp_log(np.array([D3_OVER_D1 * d1]), grids[3], tables[3])[0]
      row2 = _interp_log(d2s, grids[2], tables[2])  # [q, n_diameters, 3]
      for j, d2 in enumerate(d2s):
        rows = np.stack([row1, row2[j], row3], axis=1)
        i = _best_diameter(rows, scores.diameters)
        gap = rows[i] - STUDY_TRACKPY
        key = (float(np.max(np.abs(gap))), float(np.mean(np.abs(gap))))
        if best is None or key < best[0]:
          best = (key, Candidate.of(**values, d1=d1, d2=d2))
    results.append(best)
    bar.set_postfix_str(f"best {min(r[0][0] for r in results):.3f}")
  bar.close()
  results.sort(key=lambda r: r[0])
  return results


@dataclasses.dataclass(frozen=True)
class Coordinate:
  """One axis of the local search, with its typical step: multiplicative (log) or additive."""

  name: str
  step: float
  log: bool = True

  def move(self, candidate: Candidate, step: float) -> Candidate:
    value = candidate.get(self.name)
    new = value * math.exp(step) if self.log else value + step
    if self.name == "d1":  # keep D2 inside the [D1, D3] bracket by moving it along
      out = candidate.replace("d1", new)
      return out.replace("d2", min(max(out.get("d2"), new), D3_OVER_D1 * new))
    return candidate.replace(self.name, new)


def evolution_search(
  scores: TrackpyScores,
  start: Fit,
  coordinates: Sequence[Coordinate],
  size: int,
  budget: int,
  d1_range: tuple[float, float],
  diameters: Sequence[int],
  seed: int,
  progress=True,
  label: str = "fine",
) -> tuple[Fit, list[dict]]:
  """A (1+1) evolution strategy minimising ``Fit.key`` from ``start``.

  Each trial moves every coordinate at once by a normal step (``sigma * step``), so it
  can follow the diagonal valleys a worst-cell objective has, where a search along one
  axis at a time stalls. sigma follows the 1/5 success rule: times 1.5 on an improvement,
  times 1.5^(-1/4) otherwise. When sigma falls below 1/20 the search has converged
  locally and restarts from the best point with sigma = 1, until ``budget`` candidates
  have been scored. The budget counts fits, not seconds, so one command gives one
  calibration on any machine.

  Returns:
    (best Fit, history of accepted moves as dicts).
  """
  if budget < 0:
    raise ValueError(f"the {label} search's budget must be >= 0 fits, got {budget}")
  rng = np.random.default_rng(seed)
  best, sigma, evaluated = start, 1.0, 0
  history = [{"move": "start", "candidate": best.candidate.describe(), "max_abs_gap": best.key[0]}]
  bar = tqdm(desc=f"calibrate: {label}", unit="fit", disable=not progress)
  bar.set_postfix_str(f"max gap {best.max_abs_gap:.3f}")
  restarts = 0
  while evaluated < budget:
    if sigma < 0.05:
      sigma, restarts = 1.0, restarts + 1
    trial = best.candidate
    for coordinate, z in zip(coordinates, rng.standard_normal(len(coordinates)), strict=True):
      trial = coordinate.move(trial, sigma * coordinate.step * z)
    if trial == best.candidate or not trial.valid(d1_range):
      sigma *= 1.5**-0.25
      continue
    fit = scores.fit(trial, size, diameters)
    evaluated += 1
    bar.update(1)
    if fit.key < best.key:
      best, sigma = fit, sigma * 1.5
      history.append(
        {
          "move": f"sigma {sigma:.3g}",
          "candidate": best.candidate.describe(),
          "max_abs_gap": best.key[0],
        }
      )
      bar.set_postfix_str(f"max gap {best.max_abs_gap:.3f}")
      logging.info("%s: %s -> max gap %.3f", label, best.candidate.describe(), best.key[0])
    else:
      sigma *= 1.5**-0.25
  bar.close()
  history.append({"move": "end", "stage": label, "fits": evaluated, "restarts": restarts})
  return best, history


def _study_rows(fit_row: np.ndarray) -> list[float]:
  return [round(float(v), 4) for v in np.asarray(fit_row).reshape(-1)]


def calibrate(config, output: str | None, command: str, progress: bool = True) -> dict:
  """Runs the three-stage search and writes the calibration JSON.

  Args:
    config: ml_collections config (see experiments/configs/calibrate.py).
    output: JSON path, or None not to write.
    command: the command line, recorded in the provenance.
    progress: show progress bars.

  Returns:
    the JSON record.
  """
  start_time = time.monotonic()
  preset = presets.get(config.preset)
  if output is not None:
    io.check_output_path(output)
  d1_range = tuple(float(v) for v in config.d1_range)
  if not 0 < d1_range[0] < d1_range[1]:
    raise ValueError(f"d1_range must be 0 < lo < hi, got {config.d1_range}")
  for name in ("peak_photons_grid", "background_photons_grid"):
    if not config[name] or min(config[name]) <= 0:
      raise ValueError(f"{name} must hold positive values, got {config[name]}")
  if not (config.coarse_scale > 0 and config.fine_scale > 0):
    raise ValueError("coarse_scale and fine_scale must be > 0")
  scores = TrackpyScores(
    preset,
    config.seed,
    config.diameters,
    trackpy_baseline.Settings().percentile,
    trackpy_baseline.Settings().minmass,
    preset.epsilons_px,
  )
  fine_size = max(1, round(data.split_size(preset, "val_d1", 1.0) * config.fine_scale))
  fit_photons = config.get("fit_photons", True)
  if not fit_photons:  # N and B are the preset's (measured): only D1 and D2 are fitted
    config = config.copy_and_resolve_references()
    config.peak_photons_grid = (float(preset.values["peak_photons"]),)
    config.background_photons_grid = (float(preset.values["background_photons"]),)
    config.free_extra = False

  coarse = coarse_search(scores, config, progress)
  logging.info("coarse stage: %.0f s", time.monotonic() - start_time)
  # The fine search starts from the best coarse candidates and the spec's first probe, scored
  # at the fine size with the diameter tuned; it then keeps that diameter (3x fewer
  # trackpy runs per trial), which the full-grid tuning at the end checks.
  starts = [c for _, c in coarse[: config.fine_starts]]
  if fit_photons:
    starts.append(Candidate.of(peak_photons=3.0, background_photons=4.0, d1=0.3, d2=1.5))
  start = min((scores.fit(c, fine_size) for c in starts), key=lambda f: f.key)
  diameters = (start.diameter,)

  base = [
    Coordinate("peak_photons", math.log(1.25)),
    Coordinate("background_photons", math.log(1.4)),
    Coordinate("d1", math.log(1.3)),
    Coordinate("d2", math.log(1.3)),
  ]
  best, history = evolution_search(
    scores,
    start,
    base if fit_photons else base[2:],
    fine_size,
    config.fine_fits,
    d1_range,
    diameters,
    config.seed,
    progress,
    "fine",
  )
  freed: list[str] = []
  if best.max_abs_gap > config.target and config.free_extra:
    start = best.candidate
    for name, value in FREEABLE_START.items():
      start = start.replace(name, value)
    extra = [
      Coordinate("margin_px", 0.75, log=False),
      Coordinate("z_range_um", 0.15, log=False),
      Coordinate("sigma_z_um", math.log(1.3)),
    ]
    smaller = [dataclasses.replace(c, step=c.step / 2) for c in base]
    best_freed, history_freed = evolution_search(
      scores,
      scores.fit(start, fine_size, diameters),
      extra + smaller,
      fine_size,
      config.free_fits,
      d1_range,
      diameters,
      config.seed + 1,
      progress,
      "freed",
    )
    history += history_freed
    # Freeing must beat the sampling noise of a cell (about 0.02 at 666 frames), or the preset's
    # values stay: a 1 % nudge of the margin that shifts the worst cell by 0.005 is not a
    # fit, just another draw of the same frames.
    if best_freed.max_abs_gap < best.max_abs_gap - config.free_min_gain:
      best = best_freed
    else:
      history.append(
        {
          "move": "freed values rejected",
          "candidate": best_freed.candidate.describe(),
          "max_abs_gap": best_freed.key[0],
        }
      )
    # Only values that moved from the preset's are reported as freed.
    freed = [
      name
      for name, value in FREEABLE_START.items()
      if name in best.candidate.values and best.candidate.values[name] != value
    ]

  # Check the restricted trackpy tuning against the full grid at the final point.
  candidate = best.candidate
  values = {k: v for k, v in candidate.values.items() if k not in FREEABLE_START or k in freed}
  # Score exactly what is written: freeable values that did not move are the preset's anyway.
  sets = [
    scores.frames(candidate.values, d, k + 1, fine_size) for k, d in enumerate(candidate.regimes)
  ]
  bar = tqdm(desc="calibrate: trackpy full-grid check", unit="frame", disable=not progress)
  tuning = trackpy_baseline.tune(sets, preset.epsilons_px, workers=1, progress=bar)
  bar.close()
  settings = tuning.settings
  located = [trackpy_baseline.Locator(settings, workers=1)(s["images"]) for s in sets]
  row = np.array(
    [
      [metrics.auc(det, s["keypoints"], s["present"], e) for e in preset.epsilons_px]
      for det, s in zip(located, sets, strict=True)
    ]
  )
  gap = row - STUDY_TRACKPY
  wall = time.monotonic() - start_time
  d1, d2, d3 = candidate.regimes
  fitted = f"fitted by experiments/calibrate.py ({command})"
  provenance = {
    "peak_photons": f"{fitted}: N={values['peak_photons']:g}",
    "background_photons": f"{fitted}: B={values['background_photons']:g}",
    "regimes": f"{fitted}: D1={d1:g}, D2={d2:g}; D3=10*D1={d3:g} (ratio stated)",
  }
  if not fit_photons:
    for name in ("peak_photons", "background_photons"):
      del values[name], provenance[name]
    provenance["regimes"] += (
      f", with N={candidate.get('peak_photons'):g} and B={candidate.get('background_photons'):g} "
      "fixed at the preset's; max |gap| to the study's TrackPy row "
      f"{round(float(np.max(np.abs(gap))), 3)}"
    )
  for name in freed:
    provenance[name] = (
      f"{fitted}, freed because N, B, D1, D2 alone missed {config.target}: {values[name]:g}"
    )
  record = {
    "values": values,
    "regimes": [d1, d2, d3],
    "provenance": provenance,
    "trackpy_settings": settings.to_dict(),
    "gap": _study_rows(gap),
    "max_abs_gap": round(float(np.max(np.abs(gap))), 4),
    "trackpy_row": _study_rows(row),
    "study_row": _study_rows(STUDY_TRACKPY),
    "target": config.target,
    "freed": freed,
    "tuning_check": {
      "restricted": {
        "diameter": best.diameter,
        **{k: v for k, v in trackpy_baseline.Settings().to_dict().items() if k != "diameter"},
      },
      "restricted_max_abs_gap": round(best.max_abs_gap, 4),
      "full_grid": settings.to_dict(),
      "full_grid_objective": round(tuning.objective, 4),
      "same_diameter": settings.diameter == best.diameter,
    },
    "search": {
      "seed": config.seed,
      "coarse_frames_per_regime": max(
        1, round(data.split_size(preset, "val_d1", 1.0) * config.coarse_scale)
      ),
      "fine_frames_per_regime": fine_size,
      "coarse_best": [
        {"candidate": c.describe(), "interpolated_max_abs_gap": round(k[0], 4)}
        for k, c in coarse[:5]
      ],
      "history": history,
      "frames_located": scores.frames_located,
      "wall_s": round(wall, 1),
    },
    "command": command,
  }
  if output is not None:
    io.write_text(output, json.dumps(record, indent=2) + "\n")
  return record


def format_report(record: dict) -> str:
  """A Markdown summary: fitted values, and ours vs the study's trackpy row with the gap."""
  header = (
    "| row | "
    + " | ".join(f"D{k} e{e}" for k in (1, 2, 3) for e in (1, 2, 3))
    + " |\n|---|"
    + "---|" * 9
  )
  line = lambda name, v: (
    f"| {name} | " + " | ".join(f"{x:+.2f}" if name == "gap" else f"{x:.2f}" for x in v) + " |"
  )
  d1, d2, d3 = record["regimes"]
  values = ", ".join(f"{k}={v:g}" for k, v in record["values"].items())
  return "\n".join(
    [
      f"calibrated: {values}; D = {d1:g} / {d2:g} / {d3:g} um^2/s",
      f"trackpy settings: {record['trackpy_settings']}",
      header,
      line("TrackPy (study)", record["study_row"]),
      line("trackpy (qdjax)", record["trackpy_row"]),
      line("gap", record["gap"]),
      f"max |gap| = {record['max_abs_gap']:.3f} (target {record['target']}); "
      f"wall {record['search']['wall_s']:.0f} s",
    ]
  )
