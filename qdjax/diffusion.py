"""Diffusion coefficients from tracks, corrected for motion blur and localisation error.

A track's positions r_f are not instantaneous: each is a weighted time-average of the
path over the part of the frame that the measurement saw, plus a localisation error of
variance sigma^2 per coordinate. For such data Vestergaard, Blainey and Flyvbjerg
(Phys. Rev. E 89, 022726, 2014) give the moments of the displacements dx_f = x_{f+1} - x_f
per coordinate, with frame interval dt and blur coefficient R:

    <dx_f^2>          = 2 D dt (1 - 2R) + 2 sigma^2
    <dx_f dx_{f+1}>   = 2 D dt R - sigma^2
    <dx_f dx_{f+j}>   = 0  for j >= 2

and the covariance-based estimator (CVE) that solves them:

    D       = <dx^2> / (2 dt) + <dx_f dx_{f+1}> / dt        (no R needed)
    sigma^2 = R <dx^2> + (2R - 1) <dx_f dx_{f+1}>

or, when sigma^2 is known (e.g. from the detector), ``D = (<dx^2> - 2 sigma^2) /
(2 (1 - 2R) dt)``. R = (1/dt) * integral of F(t)(1 - F(t)) dt, F the cumulative weight of
the measurement's time-average. ``raster_blur_coefficient`` gives R for this raster scan,
both for the trajectory centroid (uniform weight over the recorded samples) and for what
a localiser sees (the lines near the QD); docs/diffusion.md derives both.

Missing frames (a track bridging a blink) are NaN rows: displacements and products are
taken only between consecutive frames that both exist.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qdjax import scan

# --- the blur coefficient -----------------------------------------------------------------


def blur_coefficient(times, weights, frame_interval_s: float) -> float:
  """R of a measurement that averages the path with ``weights`` at ``times``.

  R = (1/dt) * sum over the gaps between consecutive samples of (gap * F (1 - F)), F the
  cumulative weight up to the gap: the exact value for a weighted mean of samples of a
  Brownian path (Vestergaard et al.'s integral with a discrete shutter).

  Args:
    times: [n] seconds, any order.
    weights: [n] non-negative, not all zero.
    frame_interval_s: dt between measurements.
  """
  times = np.asarray(times, np.float64).reshape(-1)
  weights = np.asarray(weights, np.float64).reshape(-1)
  order = np.argsort(times, kind="stable")
  times, weights = times[order], weights[order]
  cumulative = np.cumsum(weights)[:-1] / weights.sum()
  return float(np.sum(np.diff(times) * cumulative * (1 - cumulative)) / frame_interval_s)


def raster_sample_times(height: int, width: int, substeps: int, dwell_s, retrace_s):
  """[height, width*substeps] sample times in float64 (host), as ``scan.sample_times``."""
  line = width * dwell_s + retrace_s
  fraction = (np.arange(substeps) + 0.5) / substeps
  columns = (np.arange(width)[:, None] + fraction[None, :]).reshape(-1) * dwell_s
  return np.arange(height)[:, None] * line + columns[None, :]


def raster_blur_coefficient(
  params, frame_interval_s: float, window: str = "local", row_px: float | None = None
) -> float:
  """R of a raster scan for the trajectory centroid or for a localiser's view.

  Args:
    params: frame Params (height, width, substeps, dwell, retrace, sigma_xy, pixel size).
    frame_interval_s: dt between frames.
    window: 'centroid': uniform weight over all recorded samples (the spec's ground truth);
      closed form ``(H W dwell + retrace (H^2 - 1)/H) / (6 dt)`` for K -> infinity.
      'local': each line weighted by the share of the QD's photons it records,
      ``exp(-(r - y)^2 / (2 (sigma_xy / a)^2))``, the weighting of a centroid-like
      localiser, which sees the QD only on the lines near it.
    row_px: the QD's row for 'local' (default: the frame's middle row).
  """
  h, w, k = params.height, params.width, params.substeps
  times = raster_sample_times(h, w, k, float(params.dwell_s), float(params.retrace_s))
  if window == "centroid":
    weights = np.ones_like(times)
  elif window == "local":
    row = (h - 1) / 2 if row_px is None else row_px
    spread = float(params.sigma_xy_um) / float(params.pixel_size_um)
    rows = np.arange(h, dtype=np.float64)
    weights = np.broadcast_to(np.exp(-((rows - row) ** 2) / (2 * spread**2))[:, None], times.shape)
  else:
    raise ValueError(f"window must be 'centroid' or 'local', got {window!r}")
  return blur_coefficient(times, weights, frame_interval_s)


def centroid_blur_closed_form(params, frame_interval_s: float) -> float:
  """The 'centroid' R in the continuous-dwell limit (K -> infinity); see docs/diffusion.md."""
  h = params.height
  recording = h * params.width * float(params.dwell_s)
  return (recording + float(params.retrace_s) * (h * h - 1) / h) / (6 * frame_interval_s)


def default_frame_interval(params, height: int | None = None, width: int | None = None) -> float:
  """height * (width * dwell + retrace), for a movie of the given frame size."""
  h = params.height if height is None else height
  w = params.width if width is None else width
  return h * float(scan.line_period(w, float(params.dwell_s), float(params.retrace_s)))


# --- the estimators ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Per-track diffusion estimate (per-coordinate values averaged over coordinates).

  Attributes:
    diffusion: D, um^2/s (or the positions' unit^2/s).
    diffusion_se: standard error of D.
    localisation_variance: sigma^2 per coordinate (estimated, or the one given).
    num_displacements: frame-to-frame displacements used per coordinate.
  """

  diffusion: float
  diffusion_se: float
  localisation_variance: float
  num_displacements: int


def _moments(positions):
  """Per coordinate: mean dx^2, mean dx_f dx_{f+1}, counts; positions [n, d] with NaN rows."""
  steps = np.diff(np.asarray(positions, np.float64), axis=0)
  valid = np.all(np.isfinite(steps), axis=1)
  n2 = int(valid.sum())
  pairs = valid[:-1] & valid[1:]
  n11 = int(pairs.sum())
  m2 = np.mean(steps[valid] ** 2, axis=0) if n2 else np.full(steps.shape[1], np.nan)
  m11 = (
    np.mean(steps[:-1][pairs] * steps[1:][pairs], axis=0)
    if n11
    else np.full(steps.shape[1], np.nan)
  )
  return m2, m11, n2, n11


def cve_variance(diffusion, localisation_variance, blur, frame_interval_s, n, dims=2):
  """Vestergaard et al.'s variance of the CVE's D for n displacements in ``dims`` coordinates:
  D^2 [(6 + 4 eps + 2 eps^2)/n + 4 (1 + eps)^2 / n^2] / dims, eps = sigma^2/(D dt) - 2R."""
  d = np.maximum(diffusion, 1e-12)
  eps = np.maximum(localisation_variance, 0.0) / (d * frame_interval_s) - 2 * blur
  return d**2 * ((6 + 4 * eps + 2 * eps**2) / n + 4 * (1 + eps) ** 2 / n**2) / dims


def cve(
  positions, frame_interval_s: float, blur: float, localisation_variance: float | None = None
) -> Estimate:
  """Covariance-based estimate of D from one track (Vestergaard et al. 2014).

  Args:
    positions: [n_frames, d] positions of consecutive frames (NaN rows for missed frames).
    frame_interval_s: dt.
    blur: R of the measurement (``raster_blur_coefficient``).
    localisation_variance: known sigma^2 per coordinate, or None to estimate it.

  Returns:
    Estimate (NaN where the track is too short: fewer than 2 displacements, or no pair of
    consecutive ones when sigma^2 is estimated).
  """
  positions = np.asarray(positions, np.float64)
  dims = positions.shape[1]
  m2, m11, n2, n11 = _moments(positions)
  dt = frame_interval_s
  if localisation_variance is None:
    d_coord = m2 / (2 * dt) + m11 / dt
    sigma2 = float(np.mean(blur * m2 + (2 * blur - 1) * m11))
    diffusion = float(np.mean(d_coord))
    ok = n2 >= 2 and n11 >= 1
    var = cve_variance(diffusion, sigma2, blur, dt, max(n2, 1), dims)
  else:
    sigma2 = float(localisation_variance)
    diffusion = float(np.mean((m2 - 2 * sigma2) / (2 * (1 - 2 * blur) * dt)))
    ok = n2 >= 2
    # Gaussian displacements correlated at lag 1 only: var(mean dx^2) = 2 (g0^2 + 2 g1^2) / n.
    g0 = 2 * max(diffusion, 0.0) * dt * (1 - 2 * blur) + 2 * sigma2
    g1 = 2 * max(diffusion, 0.0) * dt * blur - sigma2
    var = 2 * (g0**2 + 2 * g1**2) / max(n2, 1) / (2 * (1 - 2 * blur) * dt) ** 2 / dims
  if not ok:
    return Estimate(math.nan, math.nan, math.nan, n2)
  return Estimate(diffusion, float(math.sqrt(var)), sigma2, n2)


def msd_fit(lag_s, msd, dims: int = 2) -> float:
  """Naive D: least-squares line MSD = 2 dims D t through the origin (no blur, no noise).

  Args:
    lag_s: [m] lag times.
    msd: [m] mean squared displacements (summed over ``dims`` coordinates).
  """
  lag_s, msd = np.asarray(lag_s, np.float64), np.asarray(msd, np.float64)
  keep = np.isfinite(msd)
  if not keep.any():
    return math.nan
  return float(np.sum(msd[keep] * lag_s[keep]) / np.sum(lag_s[keep] ** 2) / (2 * dims))


def expected_msd(lag_s, diffusion, localisation_variance, blur, frame_interval_s, dims=2):
  """<|r(t+lag) - r(t)|^2> of blurred, noisy positions: 2 dims (D lag - 2 R D dt + sigma^2)."""
  lag_s = np.asarray(lag_s, np.float64)
  per_coord = diffusion * lag_s - 2 * blur * diffusion * frame_interval_s + localisation_variance
  return 2 * dims * per_coord


def displacement_covariance(n, diffusion, localisation_variance, blur, frame_interval_s):
  """[n, n] covariance of n consecutive displacements of one coordinate (tridiagonal)."""
  g0 = 2 * diffusion * frame_interval_s * (1 - 2 * blur) + 2 * localisation_variance
  g1 = 2 * diffusion * frame_interval_s * blur - localisation_variance
  return g0 * np.eye(n) + g1 * (np.eye(n, k=1) + np.eye(n, k=-1))


def cramer_rao_diffusion(
  n_frames: int, diffusion, localisation_variance, blur, frame_interval_s, dims: int = 2
) -> float:
  """Cramer-Rao bound on the standard deviation of any unbiased D from one track.

  The displacements of each coordinate are Gaussian with the tridiagonal covariance of
  ``displacement_covariance``; D and sigma^2 are both unknown, so the bound is the D entry
  of the inverse 2x2 Fisher matrix (Vestergaard et al. 2014; Michalet and Berglund 2012
  for the same bound without blur).
  """
  n = n_frames - 1
  if n < 2:
    return math.nan
  cov = displacement_covariance(n, diffusion, localisation_variance, blur, frame_interval_s)
  inv = np.linalg.inv(cov)
  d_diff = displacement_covariance(n, 1.0, 0.0, blur, frame_interval_s)
  d_sigma = displacement_covariance(n, 0.0, 1.0, blur, frame_interval_s)
  a, b = inv @ d_diff, inv @ d_sigma
  fisher = (
    0.5 * dims * np.array([[np.sum(a * a.T), np.sum(a * b.T)], [np.sum(b * a.T), np.sum(b * b.T)]])
  )
  return float(math.sqrt(np.linalg.inv(fisher)[0, 0]))


# --- selection by the field's edge ------------------------------------------------------------


def inclusion_weight(low, high, lower, upper):
  """Horvitz-Thompson weights of windows of paths seen inside the box [lower, upper].

  A particle placed uniformly at random (a stationary, uniform density of particles) shows
  a window of its path inside the box only if the whole window fits: the path's shape is
  independent of where it starts, so the chance is proportional to
  prod_c (L_c - range_c), L_c the box's side and range_c = max - min of the window's
  coordinate c. Windows that wander far are seen less often; weighting each by the inverse
  of that chance, ``1 / prod_c (L_c - range_c)``, makes a weighted mean over the windows seen
  an unbiased (ratio) estimate of the mean over all windows (docs/diffusion.md, section 5).

  Args:
    low, high: [..., d] each window's smallest and largest coordinates.
    lower, upper: [d] the box.

  Returns:
    [...] weights, in 1 / units^d; 0 for a window that does not lie inside the box.
  """
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
  room = (upper - lower) - (high - low)
  inside = np.all((low >= lower) & (high <= upper) & (room > 0), axis=-1)
  return np.where(inside, 1.0 / np.prod(np.where(room > 0, room, 1.0), axis=-1), 0.0)


def weighted_mean(values, weights) -> tuple[float, float]:
  """(sum w v / sum w, its standard error) for independent units: the ratio (Hajek) mean of
  a Horvitz-Thompson design and its linearised SE, sqrt(sum w^2 (v - mean)^2) / sum w.
  Non-finite values and zero weights are left out; (NaN, NaN) if nothing is left."""
  values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
  keep = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
  values, weights = values[keep], weights[keep]
  if len(values) == 0:
    return math.nan, math.nan
  total = weights.sum()
  mean = float(np.sum(weights * values) / total)
  return mean, float(np.sqrt(np.sum(weights**2 * (values - mean) ** 2)) / total)
