"""The one metric implementation used for every method (SPEC section 4).

Detections are pooled over frames, sorted by score and greedily matched: a detection is a
true positive if an unmatched ground truth of its own frame lies within L2 distance
``<= epsilon`` px (the nearest such is taken); otherwise, including duplicates, it is a
false positive. Unmatched ground truths are false negatives. The AUC is the area under
the all-point-interpolated precision-recall curve (COCO/VOC).
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
    xy: [m, 2] (x, y) px, SPEC coordinates.
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
  """Greedy score-ordered matching (SPEC section 4).

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
