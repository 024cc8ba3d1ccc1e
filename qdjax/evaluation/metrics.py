"""The one metric implementation used for every method (docs/spec.md, section 4).

Detections are pooled over frames, sorted by score and greedily matched: a detection is a
true positive if an unmatched ground truth of its own frame lies within L2 distance
``<= epsilon`` px (the nearest such is taken); otherwise, including duplicates, it is a
false positive. Unmatched ground truths are false negatives. The AUC is the area under
the all-point-interpolated precision-recall curve (COCO/VOC).

Beside the AUC: the RMSE and mean bias of matched detections, the Jaccard index
TP/(TP+FP+FN) at the best-F1 threshold (``report`` gathers these for one epsilon into an
``EpsilonReport``), and the Cramer-Rao lower bound of a static QD (``crlb``,
``crlb_for_params``) that localisation errors are compared with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Detections:
  """Detections of many frames, flattened.

  Attributes:
    frame: [m] int frame index of each detection.
    xy: [m, 2] (x, y) px, docs/spec.md coordinates.
    score: [m] higher is more confident.
  """

  frame: np.ndarray
  xy: np.ndarray
  score: np.ndarray

  @classmethod
  def from_list(cls, per_frame: Sequence[np.ndarray]) -> Detections:
    """From one [k_i, 3] array of (x, y, score) per frame (k_i may be 0)."""
    arrays = [np.asarray(d, np.float64).reshape(-1, 3) for d in per_frame]
    counts = [len(d) for d in arrays]
    stacked = np.concatenate(arrays) if arrays else np.zeros((0, 3))
    return cls(
      frame=np.repeat(np.arange(len(arrays)), counts),
      xy=stacked[:, :2],
      score=stacked[:, 2],
    )

  def __len__(self) -> int:
    return len(self.score)


@dataclasses.dataclass(frozen=True)
class Matching:
  """Greedy matching at one epsilon, in descending-score order.

  Attributes:
    score: [m] detection scores, sorted descending.
    true_positive: [m] bool.
    error: [m, 2] detection minus matched ground truth (dx, dy) px; NaN for FPs.
    num_ground_truth: number of present ground truths.
  """

  score: np.ndarray
  true_positive: np.ndarray
  error: np.ndarray
  num_ground_truth: int


def match(detections: Detections, keypoints, present, epsilon: float) -> Matching:
  """Greedy score-ordered matching (docs/spec.md, section 4).

  Args:
    detections: Detections; frame indices index ``keypoints``.
    keypoints: [n, P, 2] ground-truth (x, y) px.
    present: [n, P] bool, which ground truths exist.
    epsilon: match radius in px (a distance exactly epsilon matches).
  """
  keypoints = np.asarray(keypoints, np.float64)
  present = np.asarray(present, bool)
  order = np.argsort(-detections.score, kind="stable")
  frames = detections.frame[order]
  xy = detections.xy[order]
  if len(frames) and (frames.min() < 0 or frames.max() >= len(keypoints)):
    raise ValueError("detection frame index outside the ground-truth frames")
  unmatched = present.copy()
  true_positive = np.zeros(len(order), bool)
  error = np.full((len(order), 2), np.nan)
  for i, (f, point) in enumerate(zip(frames, xy, strict=True)):
    delta = point - keypoints[f]
    dist = np.where(unmatched[f], np.hypot(delta[:, 0], delta[:, 1]), np.inf)
    j = int(np.argmin(dist)) if dist.size else -1
    if j >= 0 and dist[j] <= epsilon:
      unmatched[f, j] = False
      true_positive[i] = True
      error[i] = delta[j]
  return Matching(
    score=detections.score[order],
    true_positive=true_positive,
    error=error,
    num_ground_truth=int(present.sum()),
  )


def precision_recall(matching: Matching):
  """Precision and recall after each detection in score order.

  Ties in score are one threshold: only the last detection of a tied run is a point on
  the curve, so the order among tied detections cannot change the area.

  Returns:
    (precision [k], recall [k], thresholds [k]).
  """
  tp = np.cumsum(matching.true_positive)
  fp = np.cumsum(~matching.true_positive)
  last_of_tie = np.r_[matching.score[1:] != matching.score[:-1], True] if len(tp) else []
  tp, fp = tp[last_of_tie], fp[last_of_tie]
  precision = tp / np.maximum(tp + fp, 1)
  recall = tp / max(matching.num_ground_truth, 1)
  return precision, recall, matching.score[last_of_tie]


def average_precision(precision, recall) -> float:
  """All-point-interpolated area under a PR curve (recall ascending)."""
  if len(recall) == 0:
    return 0.0
  envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
  steps = np.diff(np.r_[0.0, recall])
  return float(np.sum(steps * envelope))


def auc(detections, keypoints, present, epsilon: float) -> float:
  """PR AUC at ``epsilon`` px. ``detections``: Detections or a list of [k, 3] arrays."""
  if not isinstance(detections, Detections):
    detections = Detections.from_list(detections)
  return average_precision(*precision_recall(match(detections, keypoints, present, epsilon))[:2])


@dataclasses.dataclass(frozen=True)
class Localisation:
  """Errors of the matched detections (true positives) at one epsilon.

  Attributes:
    rmse_px: sqrt(mean(dx^2 + dy^2)), the 2D root-mean-square error; NaN with no match.
    bias_px: (mean dx, mean dy), detection minus ground truth; NaN with no match.
    num_matched: number of true positives the statistics come from.
  """

  rmse_px: float
  bias_px: tuple[float, float]
  num_matched: int


def localisation(matching: Matching) -> Localisation:
  """RMSE and mean bias of the true positives of ``matching``."""
  error = matching.error[matching.true_positive]
  if len(error) == 0:
    return Localisation(float("nan"), (float("nan"), float("nan")), 0)
  rmse = float(np.sqrt(np.mean(np.sum(error**2, axis=1))))
  bias = error.mean(axis=0)
  return Localisation(rmse, (float(bias[0]), float(bias[1])), len(error))


@dataclasses.dataclass(frozen=True)
class Jaccard:
  """Counts at the score threshold that maximises F1.

  Attributes:
    jaccard: TP / (TP + FP + FN) there (0 with no detections).
    f1: the best F1 = 2 TP / (2 TP + FP + FN).
    threshold: keep detections with score >= threshold (inf with no detections).
    tp, fp, fn: the counts at that threshold.
  """

  jaccard: float
  f1: float
  threshold: float
  tp: int
  fp: int
  fn: int


def best_f1(matching: Matching) -> Jaccard:
  """The Jaccard index at the best-F1 threshold.

  Thresholds are taken only between distinct scores (as in ``precision_recall``), so tied
  detections are kept or dropped together.
  """
  n = matching.num_ground_truth
  tp = np.cumsum(matching.true_positive)
  fp = np.cumsum(~matching.true_positive)
  if len(tp) == 0:
    return Jaccard(0.0, 0.0, float("inf"), 0, 0, n)
  last_of_tie = np.r_[matching.score[1:] != matching.score[:-1], True]
  tp, fp, scores = tp[last_of_tie], fp[last_of_tie], matching.score[last_of_tie]
  fn = n - tp
  f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
  # The first maximum is the highest threshold reaching it: the fewest detections kept.
  i = int(np.argmax(f1))
  jaccard = tp[i] / max(tp[i] + fp[i] + fn[i], 1)
  return Jaccard(float(jaccard), float(f1[i]), float(scores[i]), int(tp[i]), int(fp[i]), int(fn[i]))


@dataclasses.dataclass(frozen=True)
class EpsilonReport:
  """Everything measured for one method on one dataset at one epsilon.

  Attributes:
    epsilon_px: the match radius.
    auc: area under the all-point-interpolated PR curve.
    localisation: RMSE and bias of the true positives.
    jaccard: counts at the best-F1 threshold.
    precision: [k] the PR curve, one point per distinct score threshold.
    recall: [k] recall at those points (ascending).
    num_detections: detections scored.
    num_ground_truth: present ground truths.
  """

  epsilon_px: float
  auc: float
  localisation: Localisation
  jaccard: Jaccard
  precision: np.ndarray
  recall: np.ndarray
  num_detections: int
  num_ground_truth: int


def report(detections, keypoints, present, epsilon: float) -> EpsilonReport:
  """AUC, PR curve, RMSE/bias and Jaccard at ``epsilon`` px (one matching serves all).

  Args:
    detections: Detections, or a list of [k, 3] (x, y, score) arrays per frame.
    keypoints: [n, P, 2] ground-truth (x, y) px.
    present: [n, P] bool.
    epsilon: match radius in px.
  """
  if not isinstance(detections, Detections):
    detections = Detections.from_list(detections)
  matching = match(detections, keypoints, present, epsilon)
  precision, recall, _ = precision_recall(matching)
  return EpsilonReport(
    epsilon_px=float(epsilon),
    auc=average_precision(precision, recall),
    localisation=localisation(matching),
    jaccard=best_f1(matching),
    precision=np.asarray(precision),
    recall=np.asarray(recall),
    num_detections=len(detections),
    num_ground_truth=matching.num_ground_truth,
  )


@dataclasses.dataclass(frozen=True)
class CramerRao:
  """Cramer-Rao lower bound of a static QD's position (Mortensen et al. 2010).

  Attributes:
    variance_px2: per-axis variance bound, px^2.
    rmse_px: the matching bound on the 2D RMSE, sqrt(2 * variance_px2), px.
    total_photons: Ntot, expected spot photons above background.
    background_photons: b, expected background photons per pixel.
    sigma_px: s, the PSF standard deviation, px.
    tau: 2 pi sa^2 b / (Ntot a^2), the background-to-signal parameter.
  """

  variance_px2: float
  rmse_px: float
  total_photons: float
  background_photons: float
  sigma_px: float
  tau: float


def crlb(total_photons, background_photons, sigma_px, pixel_px: float = 1.0) -> CramerRao:
  """Mortensen et al. (2010) bound for a Gaussian spot in Poisson noise with background.

    var = sa^2 / Ntot * (1 + int_0^1 ln t / (1 + t / tau) dt)^-1,
    sa^2 = s^2 + a^2 / 12,   tau = 2 pi sa^2 b / (Ntot a^2).

  The integral is tau * Li2(-1/tau) in closed form (Li2 the dilogarithm): it is 0 at
  tau = 0, so b -> 0 gives sa^2 / Ntot, and it tends to -1 as tau grows, so the bound
  diverges when the background swamps the spot.

  Args:
    total_photons: Ntot > 0, expected photons of the spot above background.
    background_photons: b >= 0 per pixel.
    sigma_px: s > 0, PSF standard deviation in px.
    pixel_px: a, pixel size in the unit of ``sigma_px`` (1 when that unit is px).
  """
  n, b, s, a = (float(v) for v in (total_photons, background_photons, sigma_px, pixel_px))
  if not (n > 0 and b >= 0 and s > 0 and a >= 0) or not np.isfinite([n, b, s, a]).all():
    raise ValueError(f"crlb needs Ntot > 0, b >= 0, s > 0, a >= 0; got {n}, {b}, {s}, {a}")
  sa2 = s**2 + a**2 / 12
  tau = 2 * np.pi * sa2 * b / (n * a**2) if a > 0 else (np.inf if b > 0 else 0.0)
  from scipy import special  # slow to import, and only this function needs it

  # scipy's spence(z) = Li2(1 - z), so Li2(-1/tau) = spence(1 + 1/tau).
  integral = float(tau * special.spence(1 + 1 / tau)) if 0 < tau < np.inf else -float(tau > 0)
  variance = sa2 / n / (1 + integral) if integral > -1 else float("inf")
  return CramerRao(
    variance_px2=variance,
    rmse_px=float(np.sqrt(2 * variance)),
    total_photons=n,
    background_photons=b,
    sigma_px=s,
    tau=float(tau),
  )


def static_spot_photons(params) -> float:
  """Ntot: expected photons above background of a static, in-focus QD mid-frame.

  peak_photons times the pixel sum of the time-averaged PSF, taken from the simulator's
  own ``expected_image`` at D = 0 (so it includes the beam's sweep over each pixel).

  Args:
    params: simulate.Params.
  """
  import jax.numpy as jnp

  from qdjax.sim import simulate

  h, w, k = params.height, params.width, params.substeps
  centre = jnp.array([(w - 1) / 2, (h - 1) / 2, 0.0]) * jnp.array(
    [params.pixel_size_um, params.pixel_size_um, 1.0]
  )
  positions = jnp.broadcast_to(centre, (1, h, w, k, 3))
  lam = simulate.expected_image(positions, jnp.ones(1, bool), params)
  return float(jnp.sum(lam - params.background_photons))


def crlb_for_params(params) -> CramerRao:
  """The bound for a static in-focus QD under ``params`` (simulate.Params), in px."""
  a = float(params.pixel_size_um)
  return crlb(
    static_spot_photons(params),
    float(params.background_photons),
    float(params.sigma_xy_um) / a,
    1.0,
  )
