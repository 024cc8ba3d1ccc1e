"""The reproduction map (``qdjax.study.reproduction``) read against the study's rows.

For each of the study's rows (TrackPy, Keypoint
R-CNN) and regimes k = 1, 2, 3, a cell reproduces row k when every epsilon's AUC lies
within ``tolerance`` of the study's: twice the combined standard error of the two AUCs
(binomial, from the numbers of ground truths, ``auc_standard_error``) plus the study's
rounding to two digits. ``fit_rows`` then searches, per photon level, D1 <= D2 <= D3 on
the map's D axis (AUC interpolated linearly in log D) for the smallest worst-cell gap to
the TrackPy row, with D3 = 10 D1 as the study states and with D3 free.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qdjax.study.evaluate import STUDY
from qdjax.study.reproduction import Results

ROWS = {"TrackPy": "TrackPy", "network": "Keypoint R-CNN (paper)"}
STUDY_TEST_FRAMES = (2570, 2410, 1870)  # the study's test sets, one QD per frame
STUDY_ROUNDING = 0.005  # the study's table has two digits


def implied_sigma_px(auc: float, epsilon: float) -> float:
  """Per-axis sigma of isotropic Gaussian errors that puts a fraction ``auc`` within epsilon.

  A detector that finds every QD once, with errors N(0, sigma^2) per axis and a score
  that ranks the closer ones first, has AUC ~ P(r <= eps) = 1 - exp(-eps^2 / 2 sigma^2).
  The study's network row gives 0.87, 0.97 and 1.29 px at epsilon 1 (D1, D2, D3).
  """
  if not 0 < auc < 1:
    return float("nan") if auc <= 0 else 0.0
  return float(epsilon / math.sqrt(-2.0 * math.log1p(-auc)))


def auc_standard_error(auc, num_ground_truth) -> np.ndarray:
  """Binomial standard error of an AUC over ``num_ground_truth`` QDs, sqrt(A (1-A) / n).

  Exact for a detector with one detection per frame and a perfect ranking (the AUC is
  then the fraction found); a fair scale otherwise (checked against a bootstrap over
  frames in tests/test_reproduction.py).
  """
  auc = np.clip(np.asarray(auc, np.float64), 0.0, 1.0)
  return np.sqrt(auc * (1.0 - auc) / np.maximum(np.asarray(num_ground_truth, np.float64), 1.0))


def study_row(row: str) -> np.ndarray:
  """[3 regimes, 3 epsilons] AUC of the study's 'TrackPy' or 'network' row."""
  return np.asarray(STUDY[ROWS[row]], np.float64)


def tolerance(auc, ground_truths, row: str) -> np.ndarray:
  """Allowed |AUC - study| per cell: 2 x combined standard error + the study's rounding.

  Args:
    auc: [..., 3 regimes, 3 epsilons] ours (broadcast against the study's row).
    ground_truths: [...] QDs behind each of our AUCs.
    row: 'TrackPy' or 'network'.
  """
  study = study_row(row)
  ours = auc_standard_error(auc, np.asarray(ground_truths)[..., None, None])
  theirs = auc_standard_error(study, np.asarray(STUDY_TEST_FRAMES, np.float64)[:, None])
  return 2.0 * np.sqrt(ours**2 + theirs**2) + STUDY_ROUNDING


def row_gaps(results: Results, method: str, row: str) -> tuple[np.ndarray, np.ndarray]:
  """Gap of every cell to each regime of a study row, and the matches.

  Returns:
    gap: [levels, D, 3 regimes, 3 eps] method's AUC minus the study's regime-k AUC.
    match: [levels, D, 3 regimes] every epsilon within ``tolerance``.
  """
  auc = results.auc[method][:, :, None, :]  # [L, D, 1, E]
  gap = auc - study_row(row)
  tol = tolerance(np.broadcast_to(auc, gap.shape), results.ground_truths[method], row)
  return gap, np.all(np.abs(gap) <= tol, axis=-1)


def _interpolate_log_d(values, diffusion, d):
  """values [D, ...] at d, linear in log D (None outside the grid's D range)."""
  logs = np.log(np.asarray(diffusion))
  if not logs[0] - 1e-9 <= math.log(d) <= logs[-1] + 1e-9:
    return None
  return np.stack(
    [np.interp(math.log(d), logs, values[:, k]) for k in range(values.shape[1])], axis=0
  )


@dataclasses.dataclass(frozen=True)
class RowFit:
  """The best (D1, D2, D3) at one photon level for a method against a study row.

  Attributes:
    level: (N, B).
    regimes: (D1, D2, D3) um^2/s.
    max_abs_gap: worst |AUC - study| over the nine cells.
    gap: [3, 3] AUC minus study.
    ratio: D3 / D1.
  """

  level: tuple[float, float]
  regimes: tuple[float, float, float]
  max_abs_gap: float
  gap: np.ndarray
  ratio: float


def fit_rows(
  results: Results, method: str = "trackpy", row: str = "TrackPy", ratio: float | None = 10.0
) -> list[RowFit]:
  """Per photon level, the D1 <= D2 <= D3 that bring ``method`` closest to a study row.

  D runs over a fine log grid inside the map's range (40 points per decade); AUCs between
  map columns are interpolated linearly in log D. With ``ratio`` D3 = ratio * D1 (the
  study's 10x); with None, D3 is free.
  """
  grid = results.grid
  study = study_row(row)
  lo, hi = math.log10(grid.diffusion[0]), math.log10(grid.diffusion[-1])
  ds = np.logspace(lo, hi, int(round((hi - lo) * 40)) + 1)
  fits = []
  for level in range(len(grid.levels)):
    table = results.auc[method][level]  # [D, E]
    # Per regime k and candidate D: the worst epsilon's gap.
    curves = np.stack([_interpolate_log_d(table, grid.diffusion, d) for d in ds])  # [M, E]
    worst = np.max(np.abs(curves[:, None, :] - study[None]), axis=-1)  # [M, 3 regimes]
    best = None
    for a in range(len(ds)):
      if ratio is None:
        c_choices = range(a, len(ds))
      else:
        target = ratio * ds[a]
        if target > ds[-1] * (1 + 1e-9):
          break
        c_choices = [int(np.argmin(np.abs(np.log(ds) - math.log(target))))]
      for c in c_choices:
        b = a + int(np.argmin(worst[a : c + 1, 1]))  # D2 between D1 and D3
        score = max(worst[a, 0], worst[b, 1], worst[c, 2])
        if best is None or score < best[0] - 1e-12:
          best = (score, a, b, c)
    if best is None:
      continue
    score, a, b, c = best
    gap = np.stack([curves[a] - study[0], curves[b] - study[1], curves[c] - study[2]])
    fits.append(
      RowFit(
        level=grid.levels[level],
        regimes=(float(ds[a]), float(ds[b]), float(ds[c])),
        max_abs_gap=float(score),
        gap=gap,
        ratio=float(ds[c] / ds[a]),
      )
    )
  return fits


def blur_floor_limits(results: Results, centroid: bool = False) -> list[float | None]:
  """Per regime k: the largest map D at which the blur floor reaches the network row's
  AUC (minus its tolerance) at every epsilon, or None if it never does.

  Args:
    centroid: judge by the fraction of noise-free image centroids within epsilon (the
      AUC a centroid would score with a perfect ranking) instead of the trained
      noise-free detector's AUC.
  """
  if "blur_floor" not in results.auc:
    return [None, None, None]
  floor = results.auc["blur_floor"][0]  # [D, E]
  if centroid:
    floor = np.asarray([c["centroid_within"] for c in results.records["blur_floor"]["cells"]])
  study = study_row("network")
  tol = tolerance(floor[:, None, :], results.ground_truths["blur_floor"][0], "network")
  ok = np.all(floor[:, None, :] >= study[None] - tol, axis=-1)  # [D, 3]
  out = []
  for k in range(3):
    reach = [d for d, good in zip(results.grid.diffusion, ok[:, k], strict=True) if good]
    out.append(max(reach) if reach else None)
  return out
