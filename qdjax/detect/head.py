"""What the detector's dense outputs mean: training targets and loss, and decoding.

The network (``qdjax.detect.model``) gives per pixel a presence logit, an offset and a log sigma;
this module says what they are trained to be and how they become detections:

- **Targets and loss** (``targets``, ``loss``): the presence target is one-hot at the
  pixel nearest each keypoint and the loss a per-pixel binary cross-entropy, so
  sigmoid(logit) estimates P(keypoint in this pixel): a calibrated posterior, which is
  what a precision-recall AUC rewards when it ranks detections. Offsets (dx, dy) are
  regressed (L1) at every pixel within ``offset_radius`` of a keypoint, so the offset read
  at a peak one pixel off is still trained. Sigma, the offset's predicted rms error, is
  fitted by a Gaussian likelihood on the offset's error with the offset held fixed, so it
  cannot pull the offsets.
- **Decoding** (``decode``): peaks are local maxima of the presence probability (NMS).
  A peak's score is the presence mass in its 3x3 window (the probability that the
  keypoint is within about a pixel) times the predicted P(offset error < ``score_radius``).
  The detections are the peaks scoring at least ``min_score``, up to a cap that scales
  with the area (one per ``area_per_detection`` px^2, at least ``min_detections``), in
  fixed-size jittable arrays whose size depends only on the frame size. The offset votes
  of the 3x3 window are averaged (``refine_window``). Window maxima and sums are shifted
  slices, and the refinement is gathered at the peaks only, far cheaper on whole fields
  than ``lax.reduce_window`` and a dense refinement. What each choice gained is in
  docs/results.md ("The detector's architecture").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


def targets(keypoints, present, height: int, width: int, offset_radius: int = 1):
  """Dense training targets for a batch.

  Args:
    keypoints: [n, P, 2] (x, y) px (NaN where absent).
    present: [n, P] bool.
    height, width: frame size.
    offset_radius: offsets are trained within this Chebyshev distance (px) of the pixel
      nearest a keypoint.

  Returns:
    (heat [n, h, w] 1 at the pixel nearest a keypoint else 0,
     offsets [n, h, w, 2] (dx, dy) to the nearest keypoint,
     offset_mask [n, h, w] where offsets are trained).
  """
  x = jnp.where(present, keypoints[..., 0], -1e4)
  y = jnp.where(present, keypoints[..., 1], -1e4)
  cols = jnp.arange(width, dtype=jnp.float32)
  rows = jnp.arange(height, dtype=jnp.float32)
  cx = jnp.clip(jnp.round(x), 0, width - 1)[..., None, None]
  cy = jnp.clip(jnp.round(y), 0, height - 1)[..., None, None]
  here = present[..., None, None]
  # [n, P, h, w]
  dcol = cols[None, None, None, :] - cx
  drow = rows[None, None, :, None] - cy
  centre = here & (dcol == 0) & (drow == 0)
  near = here & (jnp.maximum(jnp.abs(dcol), jnp.abs(drow)) <= offset_radius)
  dx = x[..., None, None] - cols[None, None, None, :]
  dy = y[..., None, None] - rows[None, None, :, None]
  dist = jnp.where(near, dx**2 + dy**2, jnp.inf)
  nearest = jnp.argmin(dist, axis=1)[:, None]
  pick = lambda a: jnp.take_along_axis(jnp.broadcast_to(a, dist.shape), nearest, axis=1)[:, 0]
  offsets = jnp.stack([pick(dx), pick(dy)], axis=-1)
  mask = near.any(axis=1)
  return centre.any(axis=1).astype(jnp.float32), jnp.where(mask[..., None], offsets, 0.0), mask


def loss(
  outputs,
  keypoints,
  present,
  *,
  offset_radius: int = 1,
  offset_weight: float = 1.0,
  uncertainty_weight: float = 1.0,
):
  """Presence BCE + offset L1 + offset-uncertainty NLL.

  - presence: per-pixel binary cross-entropy against the one-hot target, summed over
    pixels, mean over frames;
  - offset: L1 of (dx, dy), mean over the pixels within ``offset_radius`` of a keypoint;
  - uncertainty: the Gaussian negative log-likelihood of the offset's error under the
    predicted isotropic sigma, with the offset held fixed (stop_gradient), so sigma learns
    how wrong the offset is without pulling the offset towards easy frames.

  Returns:
    (total loss [], dict of its parts).
  """
  logits = outputs["logits"]
  n, h, w = logits.shape
  heat, offsets, mask = targets(keypoints, present, h, w, offset_radius)
  count = jnp.maximum(mask.sum(), 1)
  presence = optax.sigmoid_binary_cross_entropy(logits, heat).sum(axis=(1, 2)).mean()
  error = outputs["offsets"] - offsets
  offset = jnp.sum(jnp.where(mask, jnp.abs(error).sum(-1), 0.0)) / count
  squared = jax.lax.stop_gradient(jnp.sum(error**2, axis=-1))
  log_sigma = outputs["log_sigma"]
  nll = squared * jnp.exp(-2 * log_sigma) / 2 + 2 * log_sigma
  uncertainty = jnp.sum(jnp.where(mask, nll, 0.0)) / count
  total = presence + offset_weight * offset + uncertainty_weight * uncertainty
  return total, {"presence": presence, "offset": offset, "uncertainty": uncertainty}


def _window_reduce(x, window: int, op, fill):
  """``op`` over a window x window neighbourhood of each pixel of [n, h, w] (outside the
  frame: ``fill``), as two 1-D passes of shifted slices: on the CPU this is an order of
  magnitude faster than ``lax.reduce_window`` on a whole field."""
  low = (window - 1) // 2  # as lax's "SAME" padding
  for axis in (1, 2):
    pad = [(0, 0)] * 3
    pad[axis] = (low, window - 1 - low)
    padded = jnp.pad(x, pad, constant_values=fill)
    size = x.shape[axis]
    out = jax.lax.slice_in_dim(padded, 0, size, axis=axis)
    for i in range(1, window):
      out = op(out, jax.lax.slice_in_dim(padded, i, i + size, axis=axis))
    x = out
  return x


def _window_sum(x, window: int):
  return _window_reduce(x, window, jnp.add, 0.0)


def _window_max(x, window: int):
  return _window_reduce(x, window, jnp.maximum, -jnp.inf)


def num_slots(height: int, width: int, area_per_detection: float, min_detections: int) -> int:
  """Detection slots of an h x w frame: one per ``area_per_detection`` px^2, at least
  ``min_detections``. A static int (frame sizes are static under jit)."""
  if not area_per_detection > 0:
    raise ValueError(f"area_per_detection must be > 0, got {area_per_detection}")
  return max(int(min_detections), math.ceil(height * width / area_per_detection))


def decode(
  outputs,
  *,
  area_per_detection: float = 256.0,
  min_detections: int = 4,
  nms_window: int = 3,
  score_window: int = 3,
  score_radius: float = 0.0,
  refine_window: int = 1,
  min_score: float = 0.0,
):
  """Detections from dense outputs: a score threshold under a per-area cap; jittable.

  Every local maximum of the presence probability is a candidate. The candidates scoring
  at least ``min_score`` are the detections, up to a cap that grows with the frame: one
  slot per ``area_per_detection`` px^2 (at least ``min_detections``), so a whole field
  yields as many detections as it holds QDs, and a crop a few. Slots are fixed-size
  arrays (their number depends only on the frame size), with ``valid`` marking the used
  ones.

  Args:
    outputs: the model's dict (``logits`` [n, h, w], ``offsets`` [n, h, w, 2], and
      ``log_sigma`` [n, h, w] if ``score_radius`` > 0).
    area_per_detection: the cap: one detection per this many px^2. The default, 256 (one
      per 16 x 16 px), is far above any density single QDs can be resolved at (their
      spots are ~5 px wide), so it never binds on real fields; it only bounds the work.
    min_detections: slots of a frame smaller than ``area_per_detection``.
    nms_window: a pixel is a candidate if its presence probability is the maximum in
      this window.
    score_window: a pixel's score is the presence probability summed over this window.
    score_radius: if > 0, the score is also multiplied by the predicted probability that
      the offset's error is within this radius, 1 - exp(-r^2 / (2 sigma^2)), so precise
      detections rank above vague ones.
    refine_window: if > 1, the position is the presence-weighted mean of the positions
      (pixel + offset) voted by the pixels in this window around the peak.
    min_score: candidates scoring below this are marked invalid (a scalar or a traced
      value).

  Returns:
    dict of [n, k] arrays ``x``, ``y`` (px, docs/spec.md coordinates), ``score`` and ``valid``
    (bool), sorted by score per frame; k = ``num_slots(h, w, ...)``.
  """
  logits, offsets = outputs["logits"], outputs["offsets"]
  n, h, w = logits.shape
  slots = num_slots(h, w, area_per_detection, min_detections)
  prob = jax.nn.sigmoid(logits)
  # Peaks are local maxima of the probability itself (its mode is the best single pixel);
  # their score is the probability mass in the window around them.
  peak_max = _window_max(prob, nms_window)
  score = _window_sum(prob, score_window) if score_window > 1 else prob
  if score_radius > 0:
    sigma2 = jnp.exp(2 * outputs["log_sigma"])
    score = score * -jnp.expm1(-(score_radius**2) / (2 * sigma2))
  flat = jnp.where(prob >= peak_max, score, -jnp.inf).reshape(n, h * w)
  k = min(slots, h * w)
  top, index = jax.lax.top_k(flat, k)
  rows, cols = index // w, index % w
  flat_prob = prob.reshape(n, h * w)
  flat_offsets = offsets.reshape(n, h * w, 2)
  # Positions are refined at the k peaks only (gathers of their windows), not at every
  # pixel of a whole field.
  lo = (refine_window - 1) // 2
  weight = x = y = 0.0
  for dr in range(-lo, refine_window - lo):
    for dc in range(-lo, refine_window - lo):
      r, c = rows + dr, cols + dc
      inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
      at = jnp.clip(r, 0, h - 1) * w + jnp.clip(c, 0, w - 1)
      p = jnp.where(inside, jnp.take_along_axis(flat_prob, at, axis=1), 0.0)
      if refine_window == 1:
        p = jnp.ones_like(p)
      o = jnp.take_along_axis(flat_offsets, at[..., None], axis=1)
      weight = weight + p
      x = x + p * (c + o[..., 0])
      y = y + p * (r + o[..., 1])
  weight = jnp.maximum(weight, 1e-12)
  x, y = x / weight, y / weight
  out = {
    "x": x.astype(jnp.float32),
    "y": y.astype(jnp.float32),
    "score": jnp.where(jnp.isfinite(top), top, 0.0),
    "valid": jnp.isfinite(top) & (top >= min_score),
  }
  if k < slots:  # a frame with fewer pixels than slots: pad with invalid slots
    pad = slots - k
    out = {key: jnp.pad(v, ((0, 0), (0, pad))) for key, v in out.items()}
  return out


def to_lists(decoded) -> list[np.ndarray]:
  """Host side: ``decode`` output -> one [k_i, 3] (x, y, score) float32 array per frame."""
  decoded = jax.device_get(decoded)
  xys = np.stack([decoded["x"], decoded["y"], decoded["score"]], axis=-1).astype(np.float32)
  return [xys[i][decoded["valid"][i]] for i in range(len(xys))]
